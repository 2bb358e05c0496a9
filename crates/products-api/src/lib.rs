//! products-api: a small products catalogue over HTTP, stored in SQLite.
//!
//! Routes: `GET /health`, `GET /products?limit=&offset=`, `GET|PUT|DELETE
//! /products/{id}`, `POST /products`. Every response carries
//! `x-served-by: <listen address>`. `--fail-rate` and `--latency-ms` inject
//! faults for tests (never on `/health`).
#![forbid(unsafe_code)]

mod db;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

pub use db::Db;

const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Options {
    pub db: PathBuf,
    pub fail_rate: f64,
    pub latency: Duration,
}

struct App {
    db: Db,
    served_by: HeaderValue,
    fail_rate: f64,
    latency: Duration,
}

/// Binds `listen` and serves until SIGTERM or SIGINT, then drains.
pub async fn run(listen: SocketAddr, opts: Options) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    serve(listener, opts, shutdown).await
}

/// Serves on an already bound listener until `shutdown` completes, then lets
/// in-flight requests finish (up to 10 s).
pub async fn serve(
    listener: TcpListener,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let db = Db::open(&opts.db)?;
    // Tests and scripts read this line to learn the port when binding to :0.
    println!("products-api listening on {addr}");
    let app = Arc::new(App {
        db,
        served_by: HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?,
        fail_rate: opts.fail_rate,
        latency: opts.latency,
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(x) => x,
                    Err(_) => {
                        // Out of file descriptors and the like: back off briefly.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let svc = hyper::service::service_fn(move |req| handle(app.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

type Resp = Response<Full<Bytes>>;

fn json_response(app: &App, status: StatusCode, body: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-served-by", app.served_by.clone());
    resp
}

fn error(app: &App, status: StatusCode, msg: &str) -> Resp {
    json_response(app, status, &json!({ "error": msg }))
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return Ok(json_response(
            &app,
            StatusCode::OK,
            &json!({"status": "ok"}),
        ));
    }
    if !app.latency.is_zero() {
        tokio::time::sleep(app.latency).await;
    }
    if app.fail_rate > 0.0 && fastrand::f64() < app.fail_rate {
        return Ok(error(
            &app,
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected failure (--fail-rate)",
        ));
    }
    Ok(route(&app, req, &path).await)
}

async fn route(app: &Arc<App>, req: Request<Incoming>, path: &str) -> Resp {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["products"]) => {
            let (limit, offset) = match pagination(req.uri().query().unwrap_or("")) {
                Ok(x) => x,
                Err(fields) => return validation_failed(app, fields),
            };
            let db = app.db.clone();
            match blocking(move || db.list(limit, offset)).await {
                Ok((items, total)) => json_response(
                    app,
                    StatusCode::OK,
                    &json!({"items": items, "limit": limit, "offset": offset, "total": total}),
                ),
                Err(e) => error(app, StatusCode::INTERNAL_SERVER_ERROR, &e),
            }
        }
        (Method::POST, ["products"]) => {
            let product = match read_product(app, req).await {
                Ok(p) => p,
                Err(resp) => return resp,
            };
            let db = app.db.clone();
            match blocking(move || db.insert(&product)).await {
                Ok(created) => {
                    let id = created["id"].as_i64().unwrap_or_default();
                    let mut resp = json_response(app, StatusCode::CREATED, &created);
                    if let Ok(v) = HeaderValue::from_str(&format!("/products/{id}")) {
                        resp.headers_mut().insert(LOCATION, v);
                    }
                    resp
                }
                Err(e) => error(app, StatusCode::INTERNAL_SERVER_ERROR, &e),
            }
        }
        (method, ["products", id]) => {
            let Ok(id) = id.parse::<i64>() else {
                return error(app, StatusCode::NOT_FOUND, "no such product");
            };
            let db = app.db.clone();
            let result = match method {
                Method::GET => blocking(move || db.get(id)).await,
                Method::DELETE => {
                    blocking(move || db.delete(id).map(|ok| ok.then(|| json!({})))).await
                }
                Method::PUT => {
                    let product = match read_product(app, req).await {
                        Ok(p) => p,
                        Err(resp) => return resp,
                    };
                    blocking(move || db.update(id, &product)).await
                }
                _ => return error(app, StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            };
            match result {
                Ok(Some(_)) if method == Method::DELETE => {
                    let mut r = json_response(app, StatusCode::NO_CONTENT, &json!({}));
                    *r.body_mut() = Full::new(Bytes::new());
                    r.headers_mut().remove(CONTENT_TYPE);
                    r
                }
                Ok(Some(p)) => json_response(app, StatusCode::OK, &p),
                Ok(None) => error(app, StatusCode::NOT_FOUND, "no such product"),
                Err(e) => error(app, StatusCode::INTERNAL_SERVER_ERROR, &e),
            }
        }
        (_, ["products"]) => error(app, StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(app, StatusCode::NOT_FOUND, "not found"),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("database task failed: {e}")))
}

fn validation_failed(app: &App, fields: Map<String, Value>) -> Resp {
    json_response(
        app,
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({"error": "validation failed", "fields": fields}),
    )
}

fn pagination(query: &str) -> Result<(i64, i64), Map<String, Value>> {
    let (mut limit, mut offset) = (50i64, 0i64);
    let mut fields = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => {
                    fields.insert("limit".into(), json!("must be an integer from 1 to 1000"));
                }
            },
            "offset" => match v.parse::<i64>() {
                Ok(n) if n >= 0 => offset = n,
                _ => {
                    fields.insert("offset".into(), json!("must be an integer ≥ 0"));
                }
            },
            _ => {}
        }
    }
    if fields.is_empty() {
        Ok((limit, offset))
    } else {
        Err(fields)
    }
}

/// A product as written by a client, validated.
#[derive(Clone, Debug)]
pub struct NewProduct {
    pub name: String,
    pub price: f64,
    pub stock: i64,
    pub description: Option<String>,
}

async fn read_product(app: &App, req: Request<Incoming>) -> Result<NewProduct, Resp> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return Err(error(
                    app,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body larger than 1 MiB",
                ));
            }
            return Err(error(
                app,
                StatusCode::BAD_REQUEST,
                "could not read request body",
            ));
        }
    };
    validate_product(&body).map_err(|fields| validation_failed(app, fields))
}

/// Checks a product document: `name` 1-200 characters, `price` > 0,
/// `stock` ≥ 0 (integer), optional `description`, nothing else.
pub fn validate_product(body: &[u8]) -> Result<NewProduct, Map<String, Value>> {
    let mut fields = Map::new();
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            fields.insert("body".into(), json!(format!("invalid JSON: {e}")));
            return Err(fields);
        }
    };
    let Value::Object(obj) = value else {
        fields.insert("body".into(), json!("expected a JSON object"));
        return Err(fields);
    };
    for key in obj.keys() {
        if !["name", "price", "stock", "description"].contains(&key.as_str()) {
            fields.insert(key.clone(), json!("unknown field"));
        }
    }
    let name = match obj.get("name") {
        Some(Value::String(s)) if (1..=200).contains(&s.chars().count()) => Some(s.clone()),
        Some(Value::String(_)) => {
            fields.insert("name".into(), json!("must be 1 to 200 characters"));
            None
        }
        Some(_) => {
            fields.insert("name".into(), json!("must be a string"));
            None
        }
        None => {
            fields.insert("name".into(), json!("is required"));
            None
        }
    };
    let price = match obj.get("price").map(|v| v.as_f64()) {
        Some(Some(p)) if p > 0.0 && p.is_finite() => Some(p),
        Some(_) => {
            fields.insert("price".into(), json!("must be a number greater than 0"));
            None
        }
        None => {
            fields.insert("price".into(), json!("is required"));
            None
        }
    };
    let stock = match obj.get("stock").map(|v| v.as_i64()) {
        Some(Some(s)) if s >= 0 => Some(s),
        Some(_) => {
            fields.insert("stock".into(), json!("must be an integer ≥ 0"));
            None
        }
        None => {
            fields.insert("stock".into(), json!("is required"));
            None
        }
    };
    let description = match obj.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 2000 => Some(s.clone()),
        Some(_) => {
            fields.insert(
                "description".into(),
                json!("must be a string of at most 2000 characters"),
            );
            None
        }
    };
    match (name, price, stock) {
        (Some(name), Some(price), Some(stock)) if fields.is_empty() => Ok(NewProduct {
            name,
            price,
            stock,
            description,
        }),
        _ => Err(fields),
    }
}
