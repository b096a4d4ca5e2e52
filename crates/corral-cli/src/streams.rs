//! The live ways into a VM from the operator's shell: its serial console in the terminal
//! (raw mode, `Ctrl-]` leaves) and its VNC display on a local port for a VNC viewer, both
//! carried over a websocket through the controller to the VM's agent.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context, Result};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use corral_api::image::StreamKind;
use corral_api::{ErrorBody, Vm};

use crate::client::Client;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The byte `Ctrl-]` sends: leaves the console.
const ESCAPE: u8 = 0x1d;

/// Opens the stream `kind` of VM `name` at the leading controller.
async fn open(c: &Client, name: &str, kind: StreamKind) -> Result<Ws> {
    // Finds the leader (and that the VM exists) the ordinary way first.
    let _: Vm = c.get(&format!("/v1/vms/{name}")).await?;
    let base = c.leader();
    let url = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.trim_start_matches("http://")),
    };
    let mut req = format!("{}/v1/vms/{name}/streams/{kind}", url.trim_end_matches('/')).into_client_request()?;
    if let Some(t) = c.token() {
        req.headers_mut().insert("authorization", format!("Bearer {t}").parse()?);
    }
    match tokio::time::timeout(std::time::Duration::from_secs(15), tokio_tungstenite::connect_async(req)).await {
        Err(_) => bail!("the controller did not open VM {name}'s {kind} within 15 s"),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_deref().and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
            match body {
                Some(b) => Err(anyhow!("{}", b.error)),
                None => Err(anyhow!("the controller refused VM {name}'s {kind}: {}", resp.status())),
            }
        }
        Ok(Err(e)) => Err(anyhow!("cannot open VM {name}'s {kind}: {e}")),
    }
}

/// Puts the terminal in raw mode while alive (keys go to the guest as typed), and back after.
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn new() -> Self {
        use nix::sys::termios;
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Self(None);
        }
        let Ok(saved) = termios::tcgetattr(&stdin) else { return Self(None) };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw);
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved);
        }
    }
}

/// The interactive serial console: the recent output, then everything the guest prints, and
/// what is typed goes to it, until `Ctrl-]` (or the end of input, or the VM stops).
pub async fn console(c: &Client, name: &str) -> Result<()> {
    let ws = open(c, name, StreamKind::Console).await?;
    eprint!("Connected to {name}'s console; Ctrl-] leaves.\r\n");
    let (mut tx, mut rx) = ws.split();
    let raw = RawTerminal::new();
    // Standard input is read on a thread of its own (it blocks).
    let (keys_tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        loop {
            let n = match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if keys_tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = std::io::stdout();
    let why = loop {
        tokio::select! {
            key = keys.recv() => match key {
                None => break None,
                Some(bytes) => {
                    let (send, leave) = match bytes.iter().position(|b| *b == ESCAPE) {
                        Some(i) => (&bytes[..i], true),
                        None => (&bytes[..], false),
                    };
                    if !send.is_empty() && tx.send(Message::Binary(send.to_vec().into())).await.is_err() {
                        break Some("the connection closed".to_string());
                    }
                    if leave {
                        break None;
                    }
                }
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => { out.write_all(&b)?; out.flush()?; }
                Some(Ok(Message::Text(t))) => { out.write_all(t.as_bytes())?; out.flush()?; }
                Some(Ok(Message::Close(f))) => break Some(f.map(|f| f.reason.to_string()).unwrap_or_else(|| "the console closed".into())),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break Some("the connection closed".to_string()),
            },
        }
    };
    let _ = tx.send(Message::Close(None)).await;
    drop(raw);
    match why {
        Some(w) if !w.is_empty() => eprintln!("\r\n[{name}: {w}]"),
        _ => eprintln!("\r\n[left {name}'s console]"),
    }
    Ok(())
}

/// Serves VM `name`'s VNC display on `listen` for VNC viewers, each connection carried on a
/// websocket of its own; with `once`, ends after the first viewer leaves.
pub async fn vnc(c: &Client, name: &str, listen: SocketAddr, once: bool) -> Result<()> {
    // Refused at once if the VM has no display, rather than at the first viewer.
    drop(open(c, name, StreamKind::Vnc).await?);
    let l = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let at = l.local_addr()?;
    println!("VM {name}'s display: point a VNC viewer at {at} (vnc://{at}); Ctrl-C ends");
    std::io::stdout().flush()?;
    loop {
        let (tcp, _) = l.accept().await?;
        let ws = open(c, name, StreamKind::Vnc).await?;
        let run = pump(ws, tcp);
        if once {
            return run.await;
        }
        tokio::spawn(async move {
            let _ = run.await;
        });
    }
}

/// Copies bytes both ways between a websocket and a TCP connection until either ends.
async fn pump(ws: Ws, tcp: tokio::net::TcpStream) -> Result<()> {
    let (mut read, mut write) = tcp.into_split();
    let (mut tx, mut rx) = ws.split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 || tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                break;
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(msg)) = rx.next().await {
            let bytes = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    tokio::select! { _ = up => {}, _ = down => {} }
    Ok(())
}
