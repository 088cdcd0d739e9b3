//! `create`: a cold backup of every declared volume.
use std::io::Write;

use anyhow::Result;

use crate::cli::CreateArgs;
use crate::Context;

pub fn run(_ctx: &Context, _args: &CreateArgs, _out: &mut dyn Write) -> Result<()> {
    anyhow::bail!("create is not built yet")
}
