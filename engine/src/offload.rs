//! Batch offload: each core hands the frames of one read, as one batch, to a helper of its own
//! (a process at the other end of a socket) and ingests the frames the helper answers with.
//!
//! This is the batch-level step the Python API's process mode needs: user code runs in one
//! worker process per core (its own interpreter, so no lock shared between cores), while the
//! engine keeps framing, key hashing, routing between cores, batching and sink I/O. The
//! pipeline then decodes the helper's answer, not the source's frames.
//!
//! The exchange is non-blocking for the core's executor (see [`exchange`]): a core waiting for
//! its helper runs its other tasks meanwhile. Only source tasks exchange
//! (from [`crate::read_step`]); the tasks that drain peers' rings never do, so a slow helper
//! slows its core's reading, never another core's drain (glommio issue 555).
//!
//! Wire format, both ways: a 4-byte big-endian byte count, then that many bytes. A request's
//! bytes are the 4-byte big-endian index of the source that read them, then its frames; an
//! answer's are frames. Frames are the engine's own framing (a 4-byte big-endian length and its
//! payload). One answer per request, in order; the requests of one core are serialised (one in
//! flight per core).

use std::cell::{Cell, RefCell};
use std::io;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest answer accepted from a helper: past it the helper is taken as broken.
pub const MAX_ANSWER: usize = 1 << 30;

/// One connected stream socket per core, to its helper. Give it to
/// [`Engine::offload`](crate::Engine::offload); core `i` (in placement order) takes the `i`-th.
#[derive(Debug)]
pub struct Offload {
    fds: Mutex<Vec<Option<OwnedFd>>>,
}

impl Offload {
    /// The helpers' sockets, one per core (a `socketpair` end each, already connected).
    pub fn new(fds: Vec<OwnedFd>) -> Arc<Self> {
        Arc::new(Offload {
            fds: Mutex::new(fds.into_iter().map(Some).collect()),
        })
    }

    /// How many cores it has a socket for.
    pub fn cores(&self) -> usize {
        self.fds.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn take(&self, core: usize) -> Option<OwnedFd> {
        let mut fds = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        fds.get_mut(core).and_then(Option::take)
    }
}

/// This core's link to its helper: its socket, taken out for the length of one exchange, and
/// whether an exchange is under way.
struct Link {
    stream: RefCell<Option<StdUnixStream>>,
    busy: Cell<bool>,
}

/// Clears the busy flag when an exchange ends, however it ends.
struct Busy<'a>(&'a Cell<bool>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

thread_local! {
    static LINK: RefCell<Option<Rc<Link>>> = const { RefCell::new(None) };
}

/// Called on core `core`'s thread before it starts: takes its socket, if the engine offloads.
pub(crate) fn enter(core: usize, offload: Option<&Arc<Offload>>) {
    let link = offload.and_then(|o| o.take(core)).map(|fd| {
        Rc::new(Link {
            stream: RefCell::new(Some(StdUnixStream::from(fd))),
            busy: Cell::new(false),
        })
    });
    LINK.with(|l| *l.borrow_mut() = link);
}

/// Whether this core hands its reads to a helper.
pub(crate) fn active() -> bool {
    LINK.with(|l| l.borrow().is_some())
}

/// Sends `batch` (a request's bytes, see the module doc) to this core's helper and returns its
/// answer (frames). An error means the helper is gone or broken: the batch is lost.
///
/// The socket is non-blocking: when it would block, the exchange sleeps on the executor's timer
/// (20 µs, doubling up to [`MAX_POLL`]) and tries again, so the core runs its other tasks while
/// the helper works. (Waiting on the socket's readiness through a glommio stream would save
/// the wake-ups; the polling is simple, costs at most 5 000 wake-ups a second per core, and
/// notices an answer at most 200 µs late, against some 10 ms of Python work on a 64 KiB read.)
pub(crate) async fn exchange(batch: Vec<u8>) -> io::Result<Vec<u8>> {
    let Some(link) = LINK.with(|l| l.borrow().clone()) else {
        return Err(io::Error::other("this core has no offload helper"));
    };
    // One exchange at a time per core (several connections of one core may read at once).
    while link.busy.get() {
        glommio::timer::sleep(MAX_POLL).await;
    }
    link.busy.set(true);
    let _done = Busy(&link.busy);
    let mut stream = link
        .stream
        .borrow_mut()
        .take()
        .ok_or_else(|| io::Error::other("the offload helper's socket was lost"))?;
    stream.set_nonblocking(true)?;
    let answer = round_trip(&mut stream, &batch).await?;
    // Put back only after a whole exchange: a stream left mid-answer is of no further use.
    *link.stream.borrow_mut() = Some(stream);
    Ok(answer)
}

/// Longest sleep between two tries of a socket that would block.
pub const MAX_POLL: Duration = Duration::from_micros(200);

/// Runs `op` (a non-blocking read or write) until it moves some bytes or fails; 0 bytes moved
/// means the peer closed.
async fn until_ready(mut op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    let mut wait = Duration::from_micros(20);
    loop {
        match op() {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                glommio::timer::sleep(wait).await;
                wait = (wait * 2).min(MAX_POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(s: &mut StdUnixStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match until_ready(|| s.write(buf)).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

async fn read_exact(s: &mut StdUnixStream, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match until_ready(|| s.read(buf)).await? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the offload helper closed its socket",
                ))
            }
            n => buf = &mut buf[n..],
        }
    }
    Ok(())
}

async fn round_trip(s: &mut StdUnixStream, batch: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(batch.len())
        .map_err(|_| io::Error::other("an offload batch is over 4 GiB"))?;
    write_all(s, &len.to_be_bytes()).await?;
    write_all(s, batch).await?;
    let mut head = [0u8; 4];
    read_exact(s, &mut head).await?;
    let n = u32::from_be_bytes(head) as usize;
    if n > MAX_ANSWER {
        return Err(io::Error::other(format!(
            "the offload helper answered {n} bytes, over the {MAX_ANSWER}-byte limit"
        )));
    }
    let mut answer = vec![0u8; n];
    read_exact(s, &mut answer).await?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper thread that answers each request with its bytes reversed, then hangs up.
    #[test]
    fn a_core_exchanges_batches_with_its_helper_and_sees_it_hang_up() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let helper = std::thread::spawn(move || {
            let mut s = theirs;
            for _ in 0..2 {
                let mut head = [0u8; 4];
                s.read_exact(&mut head).unwrap();
                let mut req = vec![0u8; u32::from_be_bytes(head) as usize];
                s.read_exact(&mut req).unwrap();
                req.reverse();
                s.write_all(&(req.len() as u32).to_be_bytes()).unwrap();
                s.write_all(&req).unwrap();
            }
        });
        let offload = Offload::new(vec![OwnedFd::from(ours)]);
        glommio::LocalExecutor::default().run(async move {
            enter(0, Some(&offload));
            assert!(active());
            assert_eq!(exchange(b"abc".to_vec()).await.unwrap(), b"cba");
            let big = vec![7u8; 1 << 20];
            assert_eq!(exchange(big.clone()).await.unwrap(), big);
            let gone = exchange(b"x".to_vec()).await;
            assert!(
                gone.is_err(),
                "a helper that hung up must be an error, got {gone:?}"
            );
            enter(0, None);
            assert!(!active());
        });
        helper.join().unwrap();
    }
}
