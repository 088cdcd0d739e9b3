//! Asking before destructive steps: on a terminal a yes/no question, without one `--yes`.
use std::io::IsTerminal;

use anyhow::Result;

use crate::exit_codes::{Code, UserError};

/// Ok when `yes` was given or the user answers yes. Without a terminal and without `yes`:
/// a usage error naming `--yes`; a "no": `Cancelled`. `what` completes "… (nothing was changed)".
pub fn confirm(yes: bool, question: &str, what: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(UserError::new(
            Code::Usage,
            format!("{what}: confirm on a terminal, or pass --yes"),
        )
        .into());
    }
    if dialoguer::Confirm::new()
        .with_prompt(question)
        .default(false)
        .interact()?
    {
        Ok(())
    } else {
        Err(UserError::new(Code::Cancelled, "not confirmed: nothing was changed").into())
    }
}
