//! `verify`: re-hash, decompress to the end, and check every manifest entry.
use std::io::Write;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::archive::reader;
use crate::cli::VerifyArgs;
use crate::exit_codes::{Code, UserError};
use crate::output::{print, table};
use crate::records::{Status, Verification};
use crate::Context;

#[derive(Serialize)]
struct Outcome {
    id: i64,
    file_path: String,
    ok: bool,
    result: String,
}

pub fn run(ctx: &Context, args: &VerifyArgs, out: &mut dyn Write) -> Result<()> {
    let catalog = ctx.catalog()?;
    let rows = if args.ids.is_empty() {
        if !args.all {
            return Err(
                UserError::new(Code::Usage, "name backups to verify (IDs), or pass --all").into(),
            );
        }
        let project = if args.all_projects {
            None
        } else {
            Some(ctx.project_name()?)
        };
        catalog
            .list(project.as_deref())?
            .into_iter()
            .filter(|r| r.status == Status::Completed)
            .collect()
    } else {
        let mut rows = Vec::new();
        for id in &args.ids {
            rows.push(catalog.get(*id)?.ok_or_else(|| {
                UserError::new(Code::Usage, format!("no backup #{id} in the catalog"))
            })?);
        }
        rows
    };
    let mut outcomes = Vec::new();
    for r in rows {
        let result = if r.status != Status::Completed {
            Verification::Failed(format!("not a completed backup ({})", r.status))
        } else {
            match reader::verify(Path::new(&r.file_path), r.sha256.as_deref()) {
                Ok(_) => Verification::Ok,
                Err(e) => Verification::Failed(format!("{e:#}")),
            }
        };
        catalog.record_verification(r.id, &result)?;
        outcomes.push(Outcome {
            id: r.id,
            file_path: r.file_path,
            ok: result == Verification::Ok,
            result: result.to_db().to_string(),
        });
    }
    print(out, args.format, &outcomes, |outcomes, out| {
        let rows = outcomes
            .iter()
            .map(|o| vec![o.id.to_string(), o.result.clone(), o.file_path.clone()]);
        Ok(write!(out, "{}", table(&["ID", "RESULT", "FILE"], rows))?)
    })?;
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| format!("#{}", o.id))
        .collect();
    if !bad.is_empty() {
        return Err(UserError::new(
            Code::VerifyFailed,
            format!("verification failed for {}", bad.join(", ")),
        )
        .into());
    }
    Ok(())
}
