//! Entry point: run the command line, print an error chain once, exit with its code.
use std::process::ExitCode;

fn main() -> ExitCode {
    docker_nuwax_backup::run(std::env::args_os().collect())
}
