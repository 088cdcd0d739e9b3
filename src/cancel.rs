//! Cancellation: SIGINT, SIGTERM, SIGHUP (a dropped SSH session, a closed terminal) and EOF
//! on docker's plugin socket all set one flag.
//! Signals are counted, not only flagged: the on-error hooks a cancel leads to are not
//! cancelled by that same cancel ([`forgive`]), only by another one.
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::exit_codes::{Code, UserError};

/// Cancels asked for so far (signals, and the plugin socket's EOF).
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// Cancels already answered (see [`forgive`]).
static FORGIVEN: AtomicUsize = AtomicUsize::new(0);

fn ask() {
    COUNT.fetch_add(1, Ordering::SeqCst);
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
        // SAFETY: the action only adds to an atomic, which is async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, ask)? };
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
        ask();
    });
}

/// True once the user asked to stop (and that cancel was not forgiven).
pub fn requested() -> bool {
    COUNT.load(Ordering::SeqCst) > FORGIVEN.load(Ordering::SeqCst)
}

/// The run has answered the cancels so far (it cleaned up and holds its outcome): what runs
/// now (the on-error hooks) stops only for a cancel that comes after this.
pub fn forgive() {
    FORGIVEN.store(COUNT.load(Ordering::SeqCst), Ordering::SeqCst);
}

/// The error a read returns once the user cancelled (for a reader deep in a decoder, which
/// can return only an io::Error): exit 130 wherever it surfaces.
pub fn as_io_error() -> std::io::Error {
    std::io::Error::other(UserError::new(Code::Cancelled, "cancelled"))
}

/// Returns a `Cancelled` error once the user asked to stop.
pub fn check() -> anyhow::Result<()> {
    if requested() {
        return Err(UserError::new(Code::Cancelled, "cancelled").into());
    }
    Ok(())
}
