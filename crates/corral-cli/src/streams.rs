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
use corral_api::tunnel::GuestPort;
use corral_api::{ErrorBody, Vm};

use crate::client::Client;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The byte `Ctrl-]` sends: leaves the console.
const ESCAPE: u8 = 0x1d;

/// Opens the stream `kind` of VM `name` at the leading controller.
async fn open(c: &Client, name: &str, kind: StreamKind) -> Result<Ws> {
    open_path(c, name, &format!("streams/{kind}"), &format!("{kind}")).await
}

/// Opens a tunnel to TCP port `port` of VM `name` at the leading controller.
async fn open_tcp(c: &Client, name: &str, port: GuestPort) -> Result<Ws> {
    open_path(c, name, &format!("tcp/{port}"), &format!("port {port}")).await
}

/// Opens the websocket `/v1/vms/{name}/{path}` at the leading controller; `what` names it
/// in errors.
async fn open_path(c: &Client, name: &str, path: &str, what: &str) -> Result<Ws> {
    // Finds the leader (and that the VM exists) the ordinary way first.
    let _: Vm = c.get(&format!("/v1/vms/{name}")).await?;
    let base = c.leader();
    let url = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.trim_start_matches("http://")),
    };
    let mut req = format!("{}/v1/vms/{name}/{path}", url.trim_end_matches('/')).into_client_request()?;
    if let Some(t) = c.token() {
        req.headers_mut().insert("authorization", format!("Bearer {t}").parse()?);
    }
    match tokio::time::timeout(std::time::Duration::from_secs(20), tokio_tungstenite::connect_async(req)).await {
        Err(_) => bail!("the controller did not open VM {name}'s {what} within 20 s"),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_deref().and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
            match body {
                Some(b) => Err(anyhow!("{}", b.error)),
                None => Err(anyhow!("the controller refused VM {name}'s {what}: {}", resp.status())),
            }
        }
        Ok(Err(e)) => Err(anyhow!("cannot open VM {name}'s {what}: {e}")),
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
        let (read, write) = tcp.into_split();
        let run = pump(ws, read, write);
        if once {
            return run.await;
        }
        tokio::spawn(async move {
            let _ = run.await;
        });
    }
}

/// Copies bytes both ways between a websocket and a local stream (a TCP connection, or
/// standard input and output) until either ends.
async fn pump(
    ws: Ws,
    mut read: impl tokio::io::AsyncRead + Unpin,
    mut write: impl tokio::io::AsyncWrite + Unpin,
) -> Result<()> {
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
            if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() {
                break;
            }
        }
    };
    tokio::select! { _ = up => {}, _ = down => {} }
    Ok(())
}

/// Carries standard input to TCP port `port` of VM `name` and what comes back to standard
/// output (`corral vm tunnel`, the ProxyCommand of `corral vm ssh`).
pub async fn tunnel(c: &Client, name: &str, port: GuestPort) -> Result<()> {
    let ws = open_tcp(c, name, port).await?;
    pump(ws, tokio::io::stdin(), tokio::io::stdout()).await
}

/// One `[ADDRESS:]LOCAL:REMOTE` of `corral vm port-forward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub local: SocketAddr,
    pub remote: GuestPort,
}

impl std::str::FromStr for Forward {
    type Err = String;
    /// `80` (the same port locally), `8080:80`, `:80` or `0:80` (a free local port), or
    /// `0.0.0.0:8080:80` (another local address).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: String| format!("invalid forward {s:?}: {why}; write [ADDRESS:]LOCAL:REMOTE, like 8080:80");
        let parts: Vec<&str> = s.split(':').collect();
        let (addr, local, remote) = match parts[..] {
            [r] => ("127.0.0.1", r, r),
            [l, r] => ("127.0.0.1", l, r),
            [a, l, r] => (a, l, r),
            _ => return Err(bad("too many ':'".into())),
        };
        let remote: GuestPort = remote.parse().map_err(bad)?;
        let local: u16 = match local {
            "" => 0,
            l if l.len() <= 5 && l.bytes().all(|c| c.is_ascii_digit()) => {
                l.parse().map_err(|_| bad(format!("local port {l} is out of range")))?
            }
            l => return Err(bad(format!("local port {l:?} is not a number"))),
        };
        let ip: std::net::IpAddr = addr.parse().map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
        Ok(Self { local: SocketAddr::new(ip, local), remote })
    }
}

/// Serves each forward on its local address until interrupted: every connection accepted
/// there is carried to the guest's port through a tunnel of its own.
pub async fn port_forward(c: &Client, name: &str, forwards: &[Forward]) -> Result<()> {
    let vm: Vm = c.get(&format!("/v1/vms/{name}")).await?;
    check_reachable(&vm)?;
    let mut tasks = tokio::task::JoinSet::new();
    for f in forwards {
        let l =
            tokio::net::TcpListener::bind(f.local).await.with_context(|| format!("cannot listen on {}", f.local))?;
        let at = l.local_addr()?;
        println!("Forwarding from {at} -> {name}:{}", f.remote);
        let (c, name, remote) = (c.clone(), name.to_string(), f.remote);
        tasks.spawn(async move {
            loop {
                let Ok((tcp, from)) = l.accept().await else { continue };
                let (c, name) = (c.clone(), name.clone());
                tokio::spawn(async move {
                    match open_tcp(&c, &name, remote).await {
                        Ok(ws) => {
                            let (read, write) = tcp.into_split();
                            let _ = pump(ws, read, write).await;
                        }
                        Err(e) => eprintln!("{from} -> {name}:{remote}: {e:#}"),
                    }
                });
            }
        });
    }
    std::io::stdout().flush()?;
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Refuses early, with what to do, a VM no tunnel can reach.
pub fn check_reachable(vm: &Vm) -> Result<()> {
    let name = &vm.def.name;
    if vm.state != corral_api::VmState::Running {
        bail!("VM {name} is {}: tunnels reach only a running guest; start it first (corral vm start {name})", vm.state);
    }
    if vm.def.ip.is_none() || vm.cluster.is_none() {
        bail!("VM {name} has no address on a cluster network, so nothing can reach its ports");
    }
    Ok(())
}
