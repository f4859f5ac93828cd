//! A TCP proxy between phones and the relay that cuts connections: after a
//! given number of bytes in one direction, both sides are shut down.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Cut after this many bytes from the phone (mid-request).
    Request(usize),
    /// Cut after this many bytes from the relay (mid-response).
    Response(usize),
    /// Answer the connection's first request in the relay's place with a
    /// 401 page, as a gateway in front of it might, then close it.
    GatewayPage,
}

pub struct Proxy {
    pub url: String,
    /// Cuts for the next connections, in order; then connections pass.
    plan: Arc<Mutex<Vec<Cut>>>,
    /// Bytes the relay may still send, over every connection, before the
    /// one carrying the next byte is cut ([`Proxy::cut_replies_after`]).
    replies_left: Budget,
    /// Bytes a second the phone's side may send (0: as fast as it can).
    upload_rate: Arc<AtomicUsize>,
    /// Bytes a second the relay's side may send (0: as fast as it can).
    download_rate: Arc<AtomicUsize>,
    /// Bytes from the phone, and from the relay, after which every new
    /// connection with no cut planned is cut (0: none).
    uploads_cut_at: Arc<AtomicUsize>,
    downloads_cut_at: Arc<AtomicUsize>,
    /// The phone's side of every connection so far.
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    /// Bytes that went phone → relay and relay → phone, headers included.
    pub up: Arc<AtomicUsize>,
    pub down: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn to(upstream_url: &str) -> Proxy {
        let upstream = upstream_url.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let plan: Arc<Mutex<Vec<Cut>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let up: Arc<AtomicUsize> = Arc::default();
        let down: Arc<AtomicUsize> = Arc::default();
        let replies_left = Budget::default();
        let upload_rate: Arc<AtomicUsize> = Arc::default();
        let download_rate: Arc<AtomicUsize> = Arc::default();
        let uploads_cut_at: Arc<AtomicUsize> = Arc::default();
        let downloads_cut_at: Arc<AtomicUsize> = Arc::default();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        {
            let open = open.clone();
            let plan = plan.clone();
            let replies_left = replies_left.clone();
            let upload_rate = upload_rate.clone();
            let download_rate = download_rate.clone();
            let uploads_cut_at = uploads_cut_at.clone();
            let downloads_cut_at = downloads_cut_at.clone();
            let stop = stop.clone();
            let (up, down) = (up.clone(), down.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if let Ok(c) = client.try_clone() {
                        open.lock().unwrap().push(c);
                    }
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        continue;
                    };
                    let cut = {
                        let mut p = plan.lock().unwrap();
                        (!p.is_empty()).then(|| p.remove(0))
                    };
                    let (req_limit, resp_limit) = match cut {
                        Some(Cut::Request(n)) => (Some(n), None),
                        Some(Cut::Response(n)) => (None, Some(n)),
                        Some(Cut::GatewayPage) => {
                            thread::spawn(move || gateway_page(client));
                            continue;
                        }
                        None => {
                            let at =
                                |n: &AtomicUsize| Some(n.load(Ordering::SeqCst)).filter(|&n| n > 0);
                            (at(&uploads_cut_at), at(&downloads_cut_at))
                        }
                    };
                    pipe(
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        req_limit,
                        Budget::default(),
                        upload_rate.clone(),
                        up.clone(),
                    );
                    pipe(
                        server,
                        client,
                        resp_limit,
                        replies_left.clone(),
                        download_rate.clone(),
                        down.clone(),
                    );
                }
            });
        }
        Proxy {
            url,
            plan,
            replies_left,
            upload_rate,
            download_rate,
            uploads_cut_at,
            downloads_cut_at,
            open,
            stop,
            up,
            down,
        }
    }

    pub fn cut_next(&self, cuts: &[Cut]) {
        self.plan.lock().unwrap().extend_from_slice(cuts);
    }

    /// Cut the connection that carries the relay's byte after the next
    /// `n`, whichever it is. A cut planned per connection misses when the
    /// HTTP client opens a new connection for a request it would usually
    /// send on the last one (which it does when that one has not yet gone
    /// back to its pool).
    pub fn cut_replies_after(&self, n: usize) {
        *self.replies_left.lock().unwrap() = Some(n);
    }

    /// Close every connection so far: a phone's next request opens a new
    /// one (and meets the next planned cut).
    pub fn close_all(&self) {
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Carry what phones send at most `bytes_per_sec` (a slow uplink).
    pub fn slow_uploads(&self, bytes_per_sec: usize) {
        self.upload_rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Carry what the relay sends at most `bytes_per_sec` (a weak signal).
    pub fn slow_downloads(&self, bytes_per_sec: usize) {
        self.download_rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Cut every connection after `bytes` from the phone from now on (a
    /// link that drops long uploads); 0 stops it. Planned cuts come first.
    pub fn cut_uploads_over(&self, bytes: usize) {
        self.uploads_cut_at.store(bytes, Ordering::SeqCst);
    }

    /// Cut every connection after `bytes` from the relay from now on (a
    /// link that drops long downloads); 0 stops it.
    pub fn cut_downloads_over(&self, bytes: usize) {
        self.downloads_cut_at.store(bytes, Ordering::SeqCst);
    }

    /// Bytes both ways since the last call.
    pub fn take_counts(&self) -> (usize, usize) {
        (
            self.up.swap(0, Ordering::SeqCst),
            self.down.swap(0, Ordering::SeqCst),
        )
    }

    pub fn pending_cuts(&self) -> usize {
        self.plan.lock().unwrap().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

/// Read a request's head and answer it with a gateway's 401 page.
fn gateway_page(mut client: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let page = "<html><body>401 Authorization Required</body></html>";
    let _ = write!(
        client,
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
        page.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}

/// Bytes that may pass over several connections before one is cut.
type Budget = Arc<Mutex<Option<usize>>>;

/// Copy `from` → `to` until EOF, or until `limit` bytes (or the budget's
/// last byte), then cut both; at most `rate` bytes a second, if set.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    limit: Option<usize>,
    budget: Budget,
    rate: Arc<AtomicUsize>,
    count: Arc<AtomicUsize>,
) {
    thread::spawn(move || {
        let mut sent = 0usize;
        let mut buf = [0u8; 8192];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let left = {
                let mut budget = budget.lock().unwrap();
                match *budget {
                    Some(b) if n >= b => budget.take(),
                    Some(b) => {
                        *budget = Some(b - n);
                        None
                    }
                    None => None,
                }
            };
            let cut_at = match (limit, left) {
                (Some(l), _) if sent + n >= l => Some(l - sent),
                (_, Some(b)) => Some(b),
                _ => None,
            };
            let n = match cut_at {
                Some(k) => {
                    let _ = to.write_all(&buf[..k]);
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    return;
                }
                _ => n,
            };
            // Counted before it is passed on: once the phone has read a
            // reply, its bytes are in the count.
            count.fetch_add(n, Ordering::SeqCst);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            let rate = rate.load(Ordering::SeqCst);
            if rate > 0 {
                thread::sleep(std::time::Duration::from_micros(
                    (n as u64).saturating_mul(1_000_000) / rate as u64,
                ));
            }
            sent += n;
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
