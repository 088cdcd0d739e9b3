//! Encryption at rest with age (https://age-encryption.org/v1): archives are encrypted to
//! public keys as they are written, so the backup host holds no key that opens them; the
//! private key (an identity) is given only to what must read the content.
use std::io::{self, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::SecretString;
use anyhow::{Context as _, Result};

use crate::exit_codes::{Code, UserError};

/// The first bytes of an age file (binary header), and of an armored one.
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";
const ARMOR_MAGIC: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

/// Whether a file starting with `head` is an age file.
pub fn is_encrypted(head: &[u8]) -> bool {
    head.starts_with(AGE_MAGIC) || head.starts_with(ARMOR_MAGIC)
}

/// Whether the file at `path` is an age file (reads its first bytes).
pub fn file_is_encrypted(path: &Path) -> Result<bool> {
    let mut head = Vec::with_capacity(ARMOR_MAGIC.len());
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(ARMOR_MAGIC.len() as u64)
        .read_to_end(&mut head)?;
    Ok(is_encrypted(&head))
}

fn key_error(message: String) -> anyhow::Error {
    UserError::new(Code::Identity, message).into()
}

/// One recipient's public key, in its canonical spelling.
fn parse_recipient(text: &str) -> Result<(String, Box<dyn age::Recipient + Send>)> {
    let t = text.trim();
    if t.starts_with("age1") {
        if let Ok(r) = age::x25519::Recipient::from_str(t) {
            return Ok((r.to_string(), Box::new(r)));
        }
    } else if t.starts_with("ssh-") {
        if let Ok(r) = age::ssh::Recipient::from_str(t) {
            return Ok((r.to_string(), Box::new(r)));
        }
    }
    let shown: String = t.chars().take(24).collect();
    Err(UserError::new(
        Code::Usage,
        format!("recipient {shown:?} is not an age public key (age1…) nor an ssh-ed25519/ssh-rsa key: make one with `age-keygen` and pass its public key"),
    )
    .into())
}

/// The public keys an archive is encrypted to (validated, canonical, in the order given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients(pub Vec<String>);

impl Recipients {
    /// `keys` and the lines of `files` (blank lines and `#` comments skipped).
    pub fn parse(keys: &[String], files: &[PathBuf]) -> Result<Recipients> {
        let mut all = Vec::new();
        for k in keys {
            all.push(parse_recipient(k)?.0);
        }
        for f in files {
            let text = std::fs::read_to_string(f).map_err(|e| {
                UserError::new(
                    Code::Usage,
                    format!("cannot read recipients file {}: {e}", f.display()),
                )
            })?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    all.push(parse_recipient(line)?.0);
                }
            }
        }
        all.dedup();
        Ok(Recipients(all))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An age encryptor to every recipient.
    pub fn encryptor(&self) -> Result<age::Encryptor> {
        let boxed: Vec<Box<dyn age::Recipient + Send>> = self
            .0
            .iter()
            .map(|k| parse_recipient(k).map(|(_, r)| r))
            .collect::<Result<_>>()?;
        age::Encryptor::with_recipients(boxed.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| anyhow::anyhow!("setting up encryption: {e}"))
    }
}

/// The recipients `x-nuwax-backup.encrypt` names (its file relative to the project folder).
pub fn project_recipients(project: &crate::compose::Project) -> Result<Recipients> {
    let Some(cfg) = &project.extension.encrypt else {
        return Ok(Recipients::default());
    };
    let files: Vec<PathBuf> = cfg
        .recipients_file
        .iter()
        .map(|f| project.dir.join(f))
        .collect();
    Recipients::parse(&cfg.recipients, &files)
}

/// An identity readable by group or others is named in a warning (as ssh does for its keys).
fn warn_if_readable(file: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(file) {
        if m.mode() & 0o044 != 0 {
            crate::output::warn(format!(
                "identity {} is readable by group or others (mode {:o}): make it private with chmod 600 '{}'",
                file.display(),
                m.mode() & 0o7777,
                file.display()
            ));
        }
    }
}

/// The private keys given with `--identity` (or `NUWAX_BACKUP_IDENTITY`), and their public keys.
pub struct Keyring {
    pub file: PathBuf,
    identities: Vec<Box<dyn age::Identity>>,
}

/// Asks for a passphrase on the terminal (only ever called when there is one).
#[derive(Clone)]
struct Terminal;

impl age::Callbacks for Terminal {
    fn display_message(&self, message: &str) {
        crate::output::stderr_line(message);
    }
    fn confirm(&self, _: &str, _: &str, _: Option<&str>) -> Option<bool> {
        None
    }
    fn request_public_string(&self, _: &str) -> Option<String> {
        None
    }
    fn request_passphrase(&self, description: &str) -> Option<SecretString> {
        dialoguer::Password::new()
            .with_prompt(description)
            .interact()
            .ok()
            .map(SecretString::from)
    }
}

impl Keyring {
    /// Reads an age identity file (as `age-keygen` writes it, or one protected by a
    /// passphrase) or an ssh private key. A passphrase is asked on a terminal; without one,
    /// a protected identity is refused. Every failure is exit 15, naming the file.
    pub fn load(file: &Path) -> Result<Keyring> {
        let shown = file.display();
        warn_if_readable(file);
        let bytes = std::fs::read(file)
            .map_err(|e| key_error(format!("cannot read identity {shown}: {e}")))?;
        let text = String::from_utf8_lossy(&bytes);
        let identities = if is_encrypted(&bytes) {
            need_terminal(file)?;
            encrypted_identity(file, &bytes)?
        } else if text.contains("-----BEGIN") {
            ssh_identity(file, &bytes)?
        } else {
            age_identities(file, &bytes)?
        };
        Ok(Keyring {
            file: file.to_path_buf(),
            identities,
        })
    }

    /// Whether these identities open what is encrypted to `recipients` (tried on a probe:
    /// works the same for every kind of key, protected ones included).
    pub fn opens(&self, recipients: &Recipients) -> Result<bool> {
        use std::io::Write;
        let mut w = recipients.encryptor()?.wrap_output(Vec::new())?;
        w.write_all(b"probe")?;
        let sealed = w.finish()?;
        let mut out = Vec::new();
        Ok(self
            .decrypt(&sealed[..])
            .is_ok_and(|mut r| r.read_to_end(&mut out).is_ok() && out == b"probe"))
    }

    /// Opens an age stream with these identities. Fails with exit 15 when none of them is
    /// a recipient of the file, naming the identity file.
    pub fn decrypt<R: Read>(&self, input: R) -> Result<age::stream::StreamReader<R>> {
        let d =
            age::Decryptor::new(input).map_err(|e| anyhow::anyhow!("not a valid age file: {e}"))?;
        d.decrypt(self.identities.iter().map(|i| i.as_ref()))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => key_error(format!(
                    "the identity in {} does not open this backup: it is encrypted to other keys (see `list --format json`, field recipients)",
                    self.file.display()
                )),
                other => key_error(format!(
                    "could not open the backup with the identity in {}: {other}",
                    self.file.display()
                )),
            })
    }
}

/// A passphrase-protected identity needs a terminal to ask on: refused (exit 15) without.
fn need_terminal(file: &Path) -> Result<()> {
    if io::stdin().is_terminal() {
        return Ok(());
    }
    Err(key_error(format!(
        "identity {} is protected by a passphrase and there is no terminal to ask for it: use an identity without a passphrase here, or run on a terminal",
        file.display()
    )))
}

type Loaded = Vec<Box<dyn age::Identity>>;

fn age_identities(file: &Path, bytes: &[u8]) -> Result<Loaded> {
    let bad = |e: String| {
        key_error(format!(
            "identity {} is not an age identity file nor an ssh private key: {e}",
            file.display()
        ))
    };
    let parsed =
        age::IdentityFile::from_buffer(BufReader::new(bytes)).map_err(|e| bad(e.to_string()))?;
    let identities = parsed.into_identities().map_err(|e| bad(e.to_string()))?;
    if identities.is_empty() {
        return Err(bad("it holds no key".into()));
    }
    Ok(identities
        .into_iter()
        .map(|i| i as Box<dyn age::Identity>)
        .collect())
}

fn ssh_identity(file: &Path, bytes: &[u8]) -> Result<Loaded> {
    let id =
        age::ssh::Identity::from_buffer(BufReader::new(bytes), Some(file.display().to_string()))
            .map_err(|e| {
                key_error(format!(
                    "identity {} is not a usable ssh private key: {e}",
                    file.display()
                ))
            })?;
    let id = match id {
        age::ssh::Identity::Unsupported(k) => {
            if matches!(k, age::ssh::UnsupportedKey::EncryptedPem) {
                need_terminal(file)?;
            }
            return Err(key_error(format!(
                "identity {}: {k:?} keys are not supported: use ed25519 or rsa",
                file.display()
            )));
        }
        // Unlocked once here (asked on the terminal), not at every use.
        age::ssh::Identity::Encrypted(enc) => {
            need_terminal(file)?;
            let pass = age::Callbacks::request_passphrase(
                &Terminal,
                &format!("Passphrase for {}", file.display()),
            )
            .ok_or_else(|| {
                key_error(format!(
                    "no passphrase given for identity {}",
                    file.display()
                ))
            })?;
            let key = enc.decrypt(pass).map_err(|_| {
                key_error(format!("wrong passphrase for identity {}", file.display()))
            })?;
            age::ssh::Identity::from(key)
        }
        other => other,
    };
    Ok(vec![Box::new(id)])
}

/// An age identity file itself encrypted with a passphrase (`age -p`).
fn encrypted_identity(file: &Path, bytes: &[u8]) -> Result<Loaded> {
    let id = age::encrypted::Identity::from_buffer(
        BufReader::new(io::Cursor::new(bytes.to_vec())),
        Some(file.display().to_string()),
        Terminal,
        None,
    )
    .ok()
    .flatten()
    .ok_or_else(|| {
        key_error(format!(
            "identity {} is an age file not protected by a passphrase",
            file.display()
        ))
    })?;
    // Unlocked once here (asked on the terminal); the identity keeps the unlocked keys.
    id.recipients()
        .map_err(|e| key_error(format!("could not unlock identity {}: {e}", file.display())))?;
    Ok(vec![Box::new(id)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_parse_and_bad_ones_are_named() {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        let r = Recipients::parse(&[format!("  {public} "), public.clone()], &[]).unwrap();
        assert_eq!(r.0, vec![public]);
        let err = Recipients::parse(&["age1nope".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an age public key"), "{err}");
    }

    #[test]
    fn a_stream_round_trips_and_a_stranger_is_refused_with_exit_15() {
        use std::io::Write;
        let id = age::x25519::Identity::generate();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        std::fs::write(
            &key,
            format!(
                "# test\n{}\n",
                age::secrecy::ExposeSecret::expose_secret(&id.to_string())
            ),
        )
        .unwrap();
        let r = Recipients::parse(&[id.to_public().to_string()], &[]).unwrap();
        let mut out = r.encryptor().unwrap().wrap_output(Vec::new()).unwrap();
        out.write_all(b"hello").unwrap();
        let sealed = out.finish().unwrap();
        assert!(is_encrypted(&sealed));
        let ring = Keyring::load(&key).unwrap();
        assert!(ring.opens(&r).unwrap());
        let mut plain = String::new();
        ring.decrypt(&sealed[..])
            .unwrap()
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, "hello");
        let other = age::x25519::Identity::generate();
        std::fs::write(
            &key,
            age::secrecy::ExposeSecret::expose_secret(&other.to_string()),
        )
        .unwrap();
        let stranger = Keyring::load(&key).unwrap();
        assert!(!stranger.opens(&r).unwrap());
        let err = stranger.decrypt(&sealed[..]).err().unwrap();
        let code = err.downcast_ref::<UserError>().map(|u| u.code);
        assert_eq!(code, Some(Code::Identity));
    }
}
