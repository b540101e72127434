//! MQTT over WebSocket (MQTT-6.0.0): path `/mqtt`, subprotocol `mqtt`, binary messages.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::transport::Transport;

/// The request path MQTT is served on.
pub const WS_PATH: &str = "/mqtt";

#[allow(clippy::result_large_err)]
fn refuse(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    response
}

/// Accepts the WebSocket upgrade on an established (TLS) stream. Refuses any path other
/// than [`WS_PATH`] and clients that do not offer the `mqtt` subprotocol (MQTT-6.0.0-3).
pub(crate) async fn accept<S>(stream: S, max_message: usize) -> Result<WsTransport<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_message);
    config.max_frame_size = Some(max_message);
    // The callback's signature is tungstenite's; its error type is what the library takes.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != WS_PATH {
            return Err(refuse(StatusCode::NOT_FOUND));
        }
        let offers_mqtt = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if !offers_mqtt {
            return Err(refuse(StatusCode::BAD_REQUEST));
        }
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(resp)
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok(WsTransport { ws })
}

/// An MQTT byte stream carried in WebSocket binary messages.
pub(crate) struct WsTransport<S> {
    ws: WebSocketStream<S>,
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for WsTransport<S> {
    async fn read_into(&mut self, buf: &mut BytesMut, _hint: usize) -> io::Result<usize> {
        loop {
            match self.ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(0),
                Some(Ok(Message::Binary(data))) => {
                    if data.is_empty() {
                        continue;
                    }
                    buf.extend_from_slice(&data);
                    return Ok(data.len());
                }
                // MQTT-6.0.0-1: MQTT data travels in binary frames only.
                Some(Ok(Message::Text(_))) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "text frame"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Err(e)) => return Err(to_io(e)),
            }
        }
    }

    async fn write_all_from(&mut self, data: &mut BytesMut) -> io::Result<()> {
        let message = Message::Binary(data.split().freeze());
        self.ws.send(message).await.map_err(to_io)
    }

    async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}
