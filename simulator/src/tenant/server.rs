//! Serving the router over HTTPS (tokio-rustls) or plain HTTP, with graceful shutdown.
//!
//! TLS handshakes run in their own tasks so a slow or silent client cannot block others;
//! finished connections are handed to axum through a [`Listener`] backed by a channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::Listener;
use axum::serve::ListenerExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// TLS connections that completed their handshake.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop ended (shutdown): never yield another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(error) => {
                tracing::debug!(%error, "Simulator accept failed.");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // As a production HTTP server does: without it a response's last small segment can
        // wait for the client's delayed ACK (~40 ms), which stalled one blob download in
        // twenty on the benchmark.
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%error, %peer, "Simulator TLS handshake failed."),
                Err(_) => tracing::debug!(%peer, "Simulator TLS handshake timed out."),
            }
        });
    }
}

/// Serve `router` on `tcp` until `cancel` fires. With `tls`, connections are wrapped first.
pub(crate) fn spawn(
    tcp: TcpListener,
    tls: Option<rustls::ServerConfig>,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let shutdown = {
        let c = cancel.clone();
        async move { c.cancelled().await }
    };
    let handle = match tls {
        Some(mut config) => {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let local = tcp.local_addr()?;
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(accept_loop(
                tcp,
                TlsAcceptor::from(Arc::new(config)),
                tx,
                cancel.clone(),
            ));
            let listener = TlsListener { rx, local };
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::warn!(%error, "Simulator server stopped with an error.");
                }
            })
        }
        None => tokio::spawn(async move {
            if let Err(error) = axum::serve(
                tcp.tap_io(|io| {
                    let _ = io.set_nodelay(true);
                }),
                router,
            )
            .with_graceful_shutdown(shutdown)
            .await
            {
                tracing::warn!(%error, "Simulator server stopped with an error.");
            }
        }),
    };
    Ok(handle)
}
