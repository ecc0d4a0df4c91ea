//! A counting TCP proxy on loopback: real bytes through real sockets, counted as they
//! cross, to check what the agent says it sent and received (docs/data-usage.md).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Forwards every connection to `target`; counts bytes each way over all of them.
pub struct CountingProxy {
    pub port: u16,
    /// Client to target (what the agent sent).
    pub up: Arc<AtomicU64>,
    /// Target to client (what the agent received).
    pub down: Arc<AtomicU64>,
    /// While set, nothing is forwarded from client to target (the other way flows).
    hold_up: Arc<AtomicBool>,
}

impl CountingProxy {
    pub fn start(target: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (u, d) = (up.clone(), down.clone());
        let hold_up = Arc::new(AtomicBool::new(false));
        let (hold, free) = (hold_up.clone(), Arc::new(AtomicBool::new(false)));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), u.clone(), hold.clone());
                pipe(server, client, d.clone(), free.clone());
            }
        });
        CountingProxy { port, up, down, hold_up }
    }

    /// Holds (or lets go) what the client sends; the target's answers still come.
    pub fn hold_up(&self, on: bool) {
        self.hold_up.store(on, Ordering::SeqCst);
    }

    /// (up, down) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.up.load(Ordering::SeqCst), self.down.load(Ordering::SeqCst))
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, count: Arc<AtomicU64>, hold: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            while hold.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    // Counted once it is handed on, as the agent counts its writes.
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    count.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
