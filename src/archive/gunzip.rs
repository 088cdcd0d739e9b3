//! Parallel decompression of our gzip archives: independent members, each carrying its own
//! size in gzp's `IG` extra field. Members are read in order, inflated and checked (CRC-32 and
//! size) on every core, and handed back in order. A damaged member, a read that fails or a
//! thread that dies is an error naming the member's offset, never a wait: every wait here has a
//! sender that can go away, and the reader hears a cancel within a fraction of a second.
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::reader::read_full;

/// Magic, method, flags, time, XFL, OS, XLEN, then `I` `G`, a 4-byte length and the size.
const HEADER: usize = 20;
/// CRC-32 and the inflated size.
const TRAILER: usize = 8;
/// A member larger than this, or one that says it inflates past it, is damage: ours hold
/// 1 MiB of input each.
const MAX_MEMBER: usize = 64 << 20;
/// How often a waiting reader looks at the cancel flag.
const POLL: Duration = Duration::from_millis(100);

type Block = io::Result<Vec<u8>>;

/// What the member reader hands the consumer, in order.
enum Next {
    Member(Receiver<Block>),
    End,
}

struct Job {
    offset: u64,
    member: Vec<u8>,
    done: SyncSender<Block>,
}

/// True when `head` starts a member of our parallel gzip format.
pub fn is_ours(head: &[u8]) -> bool {
    head.len() >= 14 && head[..2] == [0x1f, 0x8b] && head[3] & 4 == 4 && &head[12..14] == b"IG"
}

/// The decompressed stream of an archive in our gzip format.
pub struct ParGunzip {
    order: Receiver<Next>,
    block: Vec<u8>,
    pos: usize,
    ended: bool,
    failed: Option<String>,
}

impl ParGunzip {
    /// Starts reading `input` on a thread of its own, inflating on `threads` more.
    pub fn new(input: Box<dyn Read + Send>, threads: usize) -> ParGunzip {
        let threads = threads.max(1);
        let (order_tx, order) = mpsc::sync_channel(threads * 2);
        let (work_tx, work_rx) = mpsc::sync_channel::<Job>(threads * 2);
        let work_rx = Arc::new(Mutex::new(work_rx));
        for _ in 0..threads {
            let rx = Arc::clone(&work_rx);
            std::thread::spawn(move || inflate_jobs(&rx));
        }
        std::thread::spawn(move || read_members(input, &work_tx, &order_tx));
        ParGunzip {
            order,
            block: Vec::new(),
            pos: 0,
            ended: false,
            failed: None,
        }
    }

    /// The next inflated member, or `None` at the end.
    fn next_block(&mut self) -> io::Result<Option<Vec<u8>>> {
        let next = wait(|t| self.order.recv_timeout(t)).map_err(|gone| match gone {
            Gone::Cancelled => crate::cancel::as_io_error(),
            Gone::Disconnected => damaged("the gzip reader thread stopped".into()),
        })?;
        let member = match next {
            Next::End => return Ok(None),
            Next::Member(m) => m,
        };
        match wait(|t| member.recv_timeout(t)) {
            Ok(block) => block.map(Some),
            Err(Gone::Cancelled) => Err(crate::cancel::as_io_error()),
            Err(Gone::Disconnected) => Err(damaged("a gzip decompression thread stopped".into())),
        }
    }
}

impl Read for ParGunzip {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.failed {
            return Err(damaged(why.clone()));
        }
        while self.pos == self.block.len() {
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            match self.next_block() {
                Ok(Some(block)) => (self.block, self.pos) = (block, 0),
                Ok(None) => self.ended = true,
                Err(e) => {
                    if !is_cancel(&e) {
                        self.failed = Some(e.to_string());
                    }
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.block.len() - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

enum Gone {
    Cancelled,
    Disconnected,
}

/// Receives with a timeout, again and again, until a message comes, its senders are all gone,
/// or the user cancels.
fn wait<T>(mut recv: impl FnMut(Duration) -> Result<T, RecvTimeoutError>) -> Result<T, Gone> {
    loop {
        if crate::cancel::requested() {
            return Err(Gone::Cancelled);
        }
        match recv(POLL) {
            Ok(v) => return Ok(v),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Err(Gone::Disconnected),
        }
    }
}

fn damaged(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn is_cancel(e: &io::Error) -> bool {
    crate::exit_codes::user_error_in(e)
        .is_some_and(|u| u.code == crate::exit_codes::Code::Cancelled)
}

/// The reader thread: each member in turn to a worker, and its answer's place in the order.
/// It ends at a clean end of input, at the first error (sent in order, as the member's
/// answer), or when the consumer went away.
fn read_members(mut input: Box<dyn Read + Send>, work: &SyncSender<Job>, order: &SyncSender<Next>) {
    let mut offset = 0u64;
    loop {
        let member = match read_member(&mut input, offset) {
            Ok(Some(m)) => m,
            Ok(None) => {
                let _ = order.send(Next::End);
                return;
            }
            Err(e) => {
                let (tx, rx) = mpsc::sync_channel(1);
                let _ = tx.send(Err(e));
                let _ = order.send(Next::Member(rx));
                return;
            }
        };
        let len = member.len() as u64;
        let (done, answer) = mpsc::sync_channel(1);
        let job = Job {
            offset,
            member,
            done,
        };
        if order.send(Next::Member(answer)).is_err() || work.send(job).is_err() {
            return;
        }
        offset += len;
    }
}

/// One whole member starting at `offset`, or `None` at a clean end of input.
fn read_member(input: &mut dyn Read, offset: u64) -> io::Result<Option<Vec<u8>>> {
    let mut member = vec![0u8; HEADER];
    let got = read_full(input, &mut member)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER {
        return Err(damaged(format!(
            "cut short inside the gzip member at byte {offset}"
        )));
    }
    if !is_ours(&member) || member[14..16] != [4, 0] {
        return Err(damaged(format!(
            "no valid gzip member header at byte {offset}"
        )));
    }
    let size = u32::from_le_bytes([member[16], member[17], member[18], member[19]]) as usize;
    if !(HEADER + TRAILER..=MAX_MEMBER).contains(&size) {
        return Err(damaged(format!(
            "the gzip member at byte {offset} gives an impossible size ({size} bytes)"
        )));
    }
    member.resize(size, 0);
    if read_full(input, &mut member[HEADER..])? < size - HEADER {
        return Err(damaged(format!(
            "cut short inside the gzip member at byte {offset}"
        )));
    }
    Ok(Some(member))
}

/// A worker: takes jobs until the reader is gone. Its answer goes to the job's own channel;
/// a consumer that went away is not waited for.
fn inflate_jobs(jobs: &Mutex<Receiver<Job>>) {
    let mut inflater = libdeflater::Decompressor::new();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let _ = job
            .done
            .send(inflate(&mut inflater, &job.member, job.offset));
    }
}

/// Inflates one member, checking its CRC-32 and size.
fn inflate(inflater: &mut libdeflater::Decompressor, member: &[u8], offset: u64) -> Block {
    let t = &member[member.len() - 4..];
    let size = u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize;
    if size > MAX_MEMBER {
        return Err(damaged(format!(
            "the gzip member at byte {offset} says it holds {size} bytes, more than any archive of ours"
        )));
    }
    let mut out = vec![0u8; size];
    match inflater.gzip_decompress(member, &mut out) {
        Ok(n) if n == size => Ok(out),
        Ok(n) => Err(damaged(format!(
            "the gzip member at byte {offset} inflates to {n} bytes, its trailer says {size}"
        ))),
        Err(e) => Err(damaged(format!(
            "the gzip member at byte {offset} is damaged ({e}: its data or CRC-32 does not check)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Clone)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A stream of our format, as the archive writer makes it (small members, many of them).
    fn ours(data: &[u8]) -> Vec<u8> {
        use gzp::deflate::Mgzip;
        use gzp::par::compress::{ParCompress, ParCompressBuilder};
        use gzp::ZWriter;
        let out = Shared(Arc::new(Mutex::new(Vec::new())));
        let mut w: ParCompress<Mgzip, Shared> = ParCompressBuilder::new()
            .num_threads(2)
            .unwrap()
            .buffer_size(64 << 10)
            .unwrap()
            .from_writer(out.clone());
        w.write_all(data).unwrap();
        w.finish().unwrap();
        let bytes = out.0.lock().unwrap().clone();
        bytes
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7 % 251) as u8) ^ ((i / 4096) as u8))
            .collect()
    }

    fn read_all(stream: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ParGunzip::new(Box::new(io::Cursor::new(stream)), 2).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_whole_stream_reads_back_exactly() {
        let d = data(3 << 20);
        let z = ours(&d);
        assert!(is_ours(&z));
        assert_eq!(read_all(z).unwrap(), d);
        assert_eq!(read_all(ours(b"")).unwrap(), b"");
    }

    #[test]
    fn damage_anywhere_is_an_error_that_names_its_offset_never_a_wait() {
        let d = data(2 << 20);
        let z = ours(&d);
        let len = z.len();
        for at in [
            0,
            3,
            12,
            17,
            40,
            len / 3,
            len / 2,
            len - 30,
            len - 8,
            len - 3,
        ] {
            let mut bad = z.clone();
            for b in &mut bad[at..(at + 4).min(len)] {
                *b ^= 0x5a;
            }
            let started = std::time::Instant::now();
            match read_all(bad) {
                Ok(out) => assert_ne!(out, d, "damage at {at} went unseen"),
                Err(e) => assert!(e.to_string().contains("at byte"), "at {at}: {e}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "damage at {at} hung"
            );
        }
    }

    #[test]
    fn a_stream_cut_short_is_an_error() {
        let z = ours(&data(1 << 20));
        for keep in [5, 25, z.len() / 2, z.len() - 1] {
            let e = read_all(z[..keep].to_vec()).unwrap_err();
            assert!(e.to_string().contains("cut short"), "{keep}: {e}");
        }
    }

    #[test]
    fn a_reader_that_fails_is_an_error() {
        struct Failing(Vec<u8>, usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.1 >= self.0.len() / 2 {
                    return Err(io::Error::other("disk read error"));
                }
                let n = buf.len().min(self.0.len() / 2 - self.1);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let z = ours(&data(1 << 20));
        let mut out = Vec::new();
        let e = ParGunzip::new(Box::new(Failing(z, 0)), 2)
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(e.to_string().contains("disk read error"), "{e}");
    }

    #[test]
    fn a_consumer_that_stops_early_leaves_no_thread_waiting() {
        let z = ours(&data(4 << 20));
        let mut r = ParGunzip::new(Box::new(io::Cursor::new(z)), 2);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        drop(r); // the threads see their channels close and end
    }
}
