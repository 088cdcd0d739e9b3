//! Cancellation: SIGINT, SIGTERM, SIGHUP (a dropped SSH session, a closed terminal) and EOF
//! on docker's plugin socket all set one flag.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::exit_codes::{Code, UserError};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the signal handlers and, when run by the docker CLI, watches its plugin socket.
///
/// Fails only when the signal handlers cannot be registered.
pub fn install() -> anyhow::Result<()> {
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(flag()))?;
    }
    if let Ok(addr) = std::env::var("DOCKER_CLI_PLUGIN_SOCKET") {
        watch_plugin_socket(addr);
    }
    Ok(())
}

/// The docker CLI closes the socket when it is told to stop without a TTY: treat EOF as cancel.
fn watch_plugin_socket(addr: String) {
    use std::io::Read;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let sock = match addr.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&addr),
    };
    let Ok(stream) = sock.and_then(|a| UnixStream::connect_addr(&a)) else {
        return;
    };
    std::thread::spawn(move || {
        let mut stream = stream;
        let mut buf = [0u8; 64];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        flag().store(true, Ordering::SeqCst);
    });
}

/// True once the user asked to stop.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Returns a `Cancelled` error once the user asked to stop.
pub fn check() -> anyhow::Result<()> {
    if requested() {
        return Err(UserError::new(Code::Cancelled, "cancelled").into());
    }
    Ok(())
}
