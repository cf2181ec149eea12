//! The floor of courier's own stack, for `bench/run`: a bare actix-web server with one worker,
//! on the same allocator and settings as courier, and none of courier's work.
//!
//! ```text
//! floor LISTEN UPSTREAM_URL TOKEN API_KEY ANSWER_FILE
//! ```
//! - `POST /pass` forwards the body to `UPSTREAM_URL` through one awc client (keep-alive pool,
//!   the bearer token and API key as headers) and answers with the upstream's status and body:
//!   what an actix-web + awc pass-through costs with nothing else done.
//! - `POST /answer` reads the body and answers with the bytes of `ANSWER_FILE` (courier's own
//!   cache-hit answer, fetched by `bench/run`): what actix-web costs to answer from memory.
//!
//! Measured beside courier, nginx and HAProxy, it shows how much of courier's cost is the agreed
//! stack itself (ARCHITECTURE.md, "the hot path") and how much is courier's work on top.

use std::time::Duration;

use actix_web::http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

struct Upstream {
    url: String,
    authorization: HeaderValue,
    api_key: HeaderValue,
}

async fn pass(body: Bytes, client: web::Data<awc::Client>, upstream: web::Data<Upstream>) -> HttpResponse {
    let sent = client
        .post(&upstream.url)
        .insert_header((AUTHORIZATION, upstream.authorization.clone()))
        .insert_header(("x-api-key", upstream.api_key.clone()))
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .send_body(body)
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(_) => return HttpResponse::BadGateway().finish(),
    };
    match response.body().limit(1 << 20).await {
        Ok(bytes) => HttpResponse::build(response.status())
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .body(bytes),
        Err(_) => HttpResponse::BadGateway().finish(),
    }
}

async fn answer(_body: Bytes, stored: web::Data<Bytes>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
        .body(stored.get_ref().clone())
}

fn main() -> std::io::Result<()> {
    courier::allocator::small_pages();
    courier::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, url, token, api_key, answer_file] = args.as_slice() else {
        eprintln!("usage: floor LISTEN UPSTREAM_URL TOKEN API_KEY ANSWER_FILE");
        std::process::exit(2);
    };
    let header = |text: &str| HeaderValue::from_str(text).expect("a header value");
    let upstream = web::Data::new(Upstream {
        url: url.clone(),
        authorization: header(&format!("Bearer {token}")),
        api_key: header(api_key),
    });
    let stored = web::Data::new(Bytes::from(std::fs::read(answer_file)?));
    actix_web::rt::System::new().block_on(
        HttpServer::new(move || {
            let connector = awc::Connector::new().limit(64).conn_keep_alive(Duration::from_secs(30));
            let client = awc::Client::builder()
                .connector(connector)
                .disable_redirects()
                .disable_timeout()
                .no_default_headers()
                .finish();
            App::new()
                .app_data(web::Data::new(client))
                .app_data(upstream.clone())
                .app_data(stored.clone())
                .route("/pass", web::post().to(pass))
                .route("/answer", web::post().to(answer))
        })
        .workers(1)
        .bind(listen.as_str())?
        .run(),
    )
}
