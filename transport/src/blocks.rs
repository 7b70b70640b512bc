//! The QUIC block endpoint: one request per bidirectional stream, answered on the same stream.
//!
//! Both sides authenticate with libp2p TLS certificates: the client checks that the server is
//! the peer it meant to ask, and the server learns which peer asks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, IdleTimeout, VarInt};
use tokio::sync::{Semaphore, mpsc};

use crate::{RequestServer, Shared, TransportConfig, TransportError, TransportEvent};

/// Most requests the endpoint serves at once, over all connections and peers.
const SERVING_MAX: usize = 64;
/// QUIC error code sent when a peer's request is refused as invalid.
const CODE_BAD_REQUEST: u32 = 1;
/// QUIC error code sent to a peer this node does not admit.
const CODE_NOT_ADMITTED: u32 = 3;

#[derive(Clone)]
pub(crate) struct Client {
    endpoint: Endpoint,
    keypair: Keypair,
    transport: Arc<quinn::TransportConfig>,
    connections: Arc<Mutex<HashMap<PeerId, (SocketAddr, Connection)>>>,
    permits: Arc<Semaphore>,
    events: mpsc::Sender<TransportEvent>,
    response_bytes_max: usize,
    timeout: Duration,
    /// Requests come from threads outside the runtime (the node's sync actor); they are
    /// spawned onto the runtime the transport started in.
    runtime: tokio::runtime::Handle,
}

fn blocks_error(error: impl std::fmt::Display) -> TransportError {
    TransportError::Blocks(error.to_string())
}

pub(crate) fn start(
    config: &TransportConfig,
    _shared: Arc<Shared>,
    server: RequestServer,
    events: mpsc::Sender<TransportEvent>,
) -> Result<Client, TransportError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(config.streams_per_connection_max))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(IdleTimeout::try_from(Duration::from_secs(60)).map_err(blocks_error)?))
        .keep_alive_interval(Some(Duration::from_secs(15)));
    let transport = Arc::new(transport);
    let tls = libp2p_tls::make_server_config(&config.keypair).map_err(blocks_error)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(blocks_error)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(transport.clone());
    let endpoint = Endpoint::server(server_config, config.blocks_listen)
        .map_err(|e| blocks_error(format!("cannot listen on {} ({e})", config.blocks_listen)))?;
    let limits = Serving {
        all: Arc::new(Semaphore::new(SERVING_MAX)),
        peers: Arc::new(Mutex::new(HashMap::new())),
        per_peer_max: config.serving_per_peer_max.max(1),
        request_bytes_max: config.request_bytes_max,
        admit: config.admit.clone().map(Arc::new),
    };
    tokio::spawn(accept(endpoint.clone(), server, limits));
    Ok(Client {
        endpoint,
        keypair: config.keypair.clone(),
        transport,
        connections: Arc::new(Mutex::new(HashMap::new())),
        permits: Arc::new(Semaphore::new(config.requests_in_flight_max)),
        events,
        response_bytes_max: config.response_bytes_max,
        timeout: config.request_timeout,
        runtime: tokio::runtime::Handle::current(),
    })
}

fn remote_peer_id(connection: &Connection) -> Result<PeerId, String> {
    let identity = connection.peer_identity().ok_or("no peer certificate")?;
    let certificates = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity type")?;
    let first = certificates.first().ok_or("empty certificate chain")?;
    Ok(libp2p_tls::certificate::parse(first).map_err(|e| e.to_string())?.peer_id())
}

/// How many requests are served at once: in all, and for each peer, so one peer asking a lot
/// waits for its own turns and never takes everyone else's.
#[derive(Clone)]
struct Serving {
    all: Arc<Semaphore>,
    peers: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>>,
    per_peer_max: usize,
    request_bytes_max: usize,
    /// The only peers served, when set.
    admit: Option<Arc<std::collections::HashSet<PeerId>>>,
}

impl Serving {
    fn peer(&self, peer: PeerId) -> Arc<Semaphore> {
        let mut peers = self.peers.lock().expect("serving lock");
        // Semaphores of peers with nothing in flight are forgotten, so the map stays as small
        // as the set of peers being served.
        peers.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
        peers.entry(peer).or_insert_with(|| Arc::new(Semaphore::new(self.per_peer_max))).clone()
    }
}

async fn accept(endpoint: Endpoint, server: RequestServer, serving: Serving) {
    while let Some(incoming) = endpoint.accept().await {
        let server = server.clone();
        let serving = serving.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => return tracing::debug!(%error, "block connection failed"),
            };
            let peer = match remote_peer_id(&connection) {
                Ok(peer) => peer,
                Err(error) => {
                    connection.close(VarInt::from_u32(CODE_BAD_REQUEST), b"bad certificate");
                    return tracing::debug!(%error, "refused a block connection");
                }
            };
            if serving.admit.as_ref().is_some_and(|admit| !admit.contains(&peer)) {
                connection.close(VarInt::from_u32(CODE_NOT_ADMITTED), b"not admitted");
                return tracing::debug!(%peer, "refused a block connection from a peer not admitted");
            }
            serve_connection(connection, peer, server, serving).await;
        });
    }
}

async fn serve_connection(connection: Connection, peer: PeerId, server: RequestServer, serving: Serving) {
    let request_bytes_max = serving.request_bytes_max;
    let mine = serving.peer(peer);
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let Ok(own_turn) = mine.clone().acquire_owned().await else { return };
        let Ok(permit) = serving.all.clone().acquire_owned().await else { return };
        let server = server.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            let _permits = (own_turn, permit);
            let request = match recv.read_to_end(request_bytes_max).await {
                Ok(request) => request,
                Err(error) => {
                    connection.close(VarInt::from_u32(CODE_BAD_REQUEST), b"request too large or cut short");
                    return tracing::debug!(%peer, %error, "bad block request");
                }
            };
            let answer = tokio::task::spawn_blocking(move || server(peer, request)).await;
            match answer {
                Ok(Ok(response)) => {
                    if send.write_all(&response).await.is_ok() {
                        let _ = send.finish();
                    }
                }
                Ok(Err(error)) => {
                    // A peer that sends garbage is dropped; everyone else keeps being served.
                    tracing::debug!(%peer, %error, "refused a block request");
                    connection.close(VarInt::from_u32(CODE_BAD_REQUEST), b"bad request");
                }
                Err(_) => connection.close(VarInt::from_u32(CODE_BAD_REQUEST), b"server failed"),
            }
        });
    }
}

impl Client {
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Reports a request that cannot be sent.
    pub fn failed(&self, to: PeerId, tag: u64) {
        if self.events.try_send(TransportEvent::RequestFailed { to, tag }).is_err() {
            tracing::debug!("event queue full; dropping a request failure");
        }
    }

    /// Sends a request in the background; the answer becomes a `Response` event, a failure a
    /// `RequestFailed` event. With `requests_in_flight_max` requests outstanding the request
    /// fails at once.
    pub fn request(&self, to: PeerId, tag: u64, address: SocketAddr, bytes: Vec<u8>) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::debug!(%to, "too many block requests in flight; dropping one");
            return self.failed(to, tag);
        };
        let client = self.clone();
        self.runtime.spawn(async move {
            let _permit = permit;
            let result = tokio::time::timeout(client.timeout, client.exchange(to, address, bytes)).await;
            match result {
                Ok(Ok(response)) => {
                    if client.events.try_send(TransportEvent::Response { from: to, tag, bytes: response }).is_err() {
                        tracing::debug!("event queue full; dropping a response");
                        client.failed(to, tag);
                    }
                }
                Ok(Err(error)) => {
                    client.connections.lock().expect("connections lock").remove(&to);
                    tracing::debug!(%to, %error, "block request failed");
                    client.failed(to, tag);
                }
                Err(_) => {
                    client.connections.lock().expect("connections lock").remove(&to);
                    tracing::debug!(%to, "block request timed out");
                    client.failed(to, tag);
                }
            }
        });
    }

    async fn connection(&self, to: PeerId, address: SocketAddr) -> Result<Connection, String> {
        // A peer that restarted has a new address: its old connection is not reused.
        if let Some((known, connection)) = self.connections.lock().expect("connections lock").get(&to)
            && *known == address
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let tls = libp2p_tls::make_client_config(&self.keypair, Some(to)).map_err(|e| e.to_string())?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport.clone());
        let connection = self
            .endpoint
            .connect_with(config, address, "l")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        self.connections.lock().expect("connections lock").insert(to, (address, connection.clone()));
        Ok(connection)
    }

    async fn exchange(&self, to: PeerId, address: SocketAddr, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
        let connection = self.connection(to, address).await?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        recv.read_to_end(self.response_bytes_max).await.map_err(|e| e.to_string())
    }

    pub async fn shutdown(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"shutdown");
    }
}
