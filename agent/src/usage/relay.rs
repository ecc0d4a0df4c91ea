//! The MQTT link's wire: rumqttc connects to a private Unix socket, and this relay makes
//! the TCP connection to the broker (with TLS when configured) and copies bytes both
//! ways, counting them on the TCP side. rumqttc offers no way to hand it a socket or wrap
//! its transport, and this is the only way to count the bytes that cross the link,
//! TLS records and handshakes included.
//!
//! The socket lives in a directory only this user can enter, and a connection from any
//! process but this one is refused (the relay would otherwise lend our TLS client
//! identity to it). A failure to reach the broker is kept for the link to report: rumqttc
//! only sees the Unix connection close.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Counted, Counter};

/// How long reaching the broker may take (TCP and TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

trait Wire: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Wire for T {}

/// The running relay; the socket and its directory go when it is dropped.
pub struct Relay {
    pub path: PathBuf,
    dir: PathBuf,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the relay keeps the reason its last connection to the broker failed.
#[derive(Clone, Default)]
pub struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    /// The reason, once: a later failure that is rumqttc's own is not blamed on it.
    pub fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut e| e.take())
    }
    fn set(&self, e: String) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(e);
        }
    }
}

impl Relay {
    pub fn last_error(&self) -> LastError {
        LastError(self.last_error.clone())
    }
}

/// Binds the socket and serves it until `stop`.
pub fn start(
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    counter: Arc<Counter>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) -> io::Result<Relay> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "edge-agent-mqtt-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let path = dir.join("s");
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let last_error = LastError::default();
    let relay = Relay { path, dir, last_error: last_error.0.clone() };
    let name = ServerName::try_from(host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("mqtt.host {host:?}: {e}")))?;
    let ctx = Arc::new(Ctx { host, port, name, tls, counter, last_error });
    let inner = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((local, _)) = accepted else { continue };
            let ours = local.peer_cred().ok().and_then(|c| c.pid()) == Some(std::process::id() as i32);
            if !ours {
                tracing::warn!("a connection to the MQTT relay socket from another process was refused");
                continue;
            }
            let ctx = ctx.clone();
            let stop = stop.clone();
            inner.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = ctx.serve(local) => {}
                }
            });
        }
    });
    Ok(relay)
}

struct Ctx {
    host: String,
    port: u16,
    name: ServerName<'static>,
    tls: Option<Arc<rustls::ClientConfig>>,
    counter: Arc<Counter>,
    last_error: LastError,
}

impl Ctx {
    async fn serve(&self, mut local: UnixStream) {
        let mut remote = match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.last_error.set(e),
            Err(_) => {
                return self.last_error.set(format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()));
            }
        };
        if let Err(e) = tokio::io::copy_bidirectional(&mut local, &mut remote).await {
            // The TLS layer's reasons (a refused client certificate) come this way.
            self.last_error.set(crate::tls::error_chain(&e));
        }
    }

    async fn connect(&self) -> Result<Box<dyn Wire>, String> {
        let tcp =
            TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| format!("I/O: {e}"))?;
        // Acknowledged at once and without Nagle's algorithm: see super::quickack.
        let counted = Counted::new(super::quickack::QuickAck::new(tcp), self.counter.clone());
        match &self.tls {
            None => Ok(Box::new(counted)),
            Some(cfg) => {
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(self.name.clone(), counted)
                    .await
                    .map_err(|e| format!("TLS: {}", crate::tls::error_chain(&e)))?;
                Ok(Box::new(tls))
            }
        }
    }
}
