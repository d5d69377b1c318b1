//! The HTTP surface: routes, authentication, the handlers and the OpenAPI document.
//!
//! Authentication: a request carries either `Authorization: Bearer TOKEN` (scripts) or the
//! `mohd_session` cookie (the page). A cookie-authenticated request that changes anything
//! must also carry `X-CSRF-Token` equal to its session's token; SameSite=Strict already keeps
//! other sites' requests from carrying the cookie, the header makes that not depend on the
//! browser. Tokens and the password can only be managed from a session: a leaked token must
//! not be able to mint more tokens or lock the admin out.
//!
//! Every backend call runs on the blocking pool: some are slow by nature (decoding an upload,
//! rendering a preview) and the others may wait on a lock a slow one holds.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, Extension, FromRequest, Path, Query, Request, State,
};
use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::auth::{self, AuthError, AuthStore, LoginLimiter, Sessions};
use super::backend::{
    AnnouncementsDto, AnnouncementsInput, ApiError, AvailabilityDto, Backend, ChannelDto,
    ChannelInput, ChannelMode, ChannelNextDto, ChannelPlaylist, ChannelRename, ChannelStatusDto,
    DatedDto, DeleteRefused, DialplanDto, DrainRequest, HealthDto, ManagedRouteDto, ProgrammeDto,
    ProgrammeInput, ScheduleChangeDto, ScheduleDto, SettingsDto, StatusDto, SwitchAt, TrackDto,
    TrackRefDto, UploadSink, WeeklyDto,
};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "mohd_session";
/// Header carrying the session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends after this long without a request.
const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Cap on every request body but uploads (JSON is a few hundred bytes).
const JSON_LIMIT: usize = 64 * 1024;
/// An upload that sends nothing for this long is abandoned.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);
/// Chunks queued between the socket and the disk writer: bounds an upload's memory to a few
/// socket reads while the two overlap.
const UPLOAD_QUEUE: usize = 8;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Server options the handlers need.
#[derive(Debug, Clone)]
pub struct Options {
    pub metrics_public: bool,
    pub max_upload_bytes: u64,
    /// Served over TLS: the session cookie gets `Secure`.
    pub https: bool,
    /// `POST /api/tls/reload`'s target.
    pub tls_reloader: Option<Arc<crate::tls::TlsReloader>>,
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    backend: Arc<dyn Backend>,
    auth: Arc<Mutex<AuthStore>>,
    sessions: Mutex<Sessions>,
    limiter: Mutex<LoginLimiter>,
    options: Options,
    openapi: Bytes,
}

impl AppState {
    pub fn new(backend: Arc<dyn Backend>, auth: AuthStore, options: Options) -> AppState {
        AppState(Arc::new(Inner {
            backend,
            auth: Arc::new(Mutex::new(auth)),
            sessions: Mutex::new(Sessions::new(SESSION_IDLE)),
            limiter: Mutex::new(LoginLimiter::new()),
            options,
            openapi: Bytes::from(openapi_json()),
        }))
    }

    fn auth(&self) -> MutexGuard<'_, AuthStore> {
        lock(&self.0.auth)
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        lock(&self.0.sessions)
    }

    fn limiter(&self) -> MutexGuard<'_, LoginLimiter> {
        lock(&self.0.limiter)
    }

    /// The auth store with changes made by `mohd passwd` / `mohd token` picked up.
    fn fresh_auth(&self) -> MutexGuard<'_, AuthStore> {
        let mut a = self.auth();
        if let Err(e) = a.refresh() {
            tracing::warn!(error = %e, "cannot re-read the credentials; using the ones loaded");
        }
        a
    }

    /// Runs `f` on the blocking pool with the backend.
    async fn backend<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Backend) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let b = self.0.backend.clone();
        tokio::task::spawn_blocking(move || f(&*b))
            .await
            .map_err(internal)
    }
}

/// A poisoned lock only means a panic elsewhere while it was held; the data (sessions, a
/// limiter, the credentials, each changed only after a successful write) stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, format!("internal error: {e}"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (
            status,
            Json(ErrorDto {
                error: self.message,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mohd\""),
            );
        }
        r
    }
}

/// Who made the request (inserted by the auth middleware).
#[derive(Debug, Clone)]
pub enum Principal {
    /// A logged-in browser.
    Session { id: String, csrf: String },
    /// An API token, by name.
    Token { name: String },
}

fn session_only() -> ApiError {
    ApiError::new(
        403,
        "API tokens and the password can only be managed from the admin page (log in with the password)",
    )
}

// ---------------------------------------------------------------------------------------------
// Request and response bodies of the API's own (those of the backend are in `backend`).

/// Every error: `{"error": "..."}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDto {
    /// What went wrong, as a sentence.
    pub error: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Send as `X-CSRF-Token` on every POST/PUT/PATCH/DELETE of this session.
    pub csrf_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionDto {
    pub authenticated: bool,
    /// The session's CSRF token; `null` for a token.
    pub csrf_token: Option<String>,
    /// `session` or `token`.
    pub via: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// File name in the library, e.g. `welcome.mp3`.
    pub name: String,
    /// Replace an existing track of that name (it keeps its place in the playlist).
    #[serde(default)]
    pub overwrite: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackPatch {
    pub enabled: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaylistOrder {
    /// Every track id, in the new order.
    pub order: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenDto {
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1-64 characters from `A-Z a-z 0-9 . _ -`.
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    pub name: String,
    /// The token itself; shown this once, only its hash is kept.
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current: String,
    pub new: String,
}

/// `Json<T>` whose refusals (bad JSON, wrong content type, too large) are JSON errors too.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(rej) => Err(ApiError::new(rej.status().as_u16(), rej.body_text())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The router

/// Every route, with authentication where the contract wants it and the security headers.
pub fn router(state: AppState) -> Router {
    let mut public = Router::new()
        .route("/", get(page_index))
        .route("/app.js", get(page_js))
        .route("/style.css", get(page_css))
        .route("/healthz", get(healthz))
        .route("/api/openapi.json", get(openapi))
        .route("/api/login", post(login));
    let mut protected = Router::new()
        .route("/api/logout", post(logout))
        .route("/api/session", get(session))
        .route("/api/status", get(status))
        .route("/api/tracks", get(list_tracks).post(upload_track))
        .route(
            "/api/tracks/{id}",
            get(get_track).patch(patch_track).delete(delete_track),
        )
        .route("/api/tracks/{id}/preview", get(preview))
        .route("/api/playlist", put(put_playlist))
        .route("/api/channels", get(channels).post(create_channel))
        .route(
            "/api/channels/{name}",
            get(get_channel).put(put_channel).delete(delete_channel),
        )
        .route("/api/channels/{name}/rename", post(rename_channel))
        .route("/api/channels/{name}/playlist", put(put_channel_playlist))
        .route("/api/routes", get(get_routes).put(put_routes))
        .route("/api/dialplan", get(dialplan))
        .route("/api/settings", get(get_settings).put(put_settings))
        .route("/api/tokens", get(list_tokens).post(create_token))
        .route("/api/tokens/{name}", delete(revoke_token))
        .route("/api/password", post(change_password))
        .route("/api/tls/reload", post(reload_tls))
        .route("/api/drain", post(drain))
        .route("/api/library/export/manifest.json", get(export_manifest))
        .route("/api/library/export/files/{sha256}", get(export_file));
    if state.0.options.metrics_public {
        public = public.route("/metrics", get(metrics));
    } else {
        protected = protected.route("/metrics", get(metrics));
    }
    let protected =
        protected.route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    let header = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    Router::new()
        .merge(public)
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .layer(header("content-security-policy", CSP))
        .layer(header("x-content-type-options", "nosniff"))
        .layer(header("x-frame-options", "DENY"))
        .layer(header("referrer-policy", "no-referrer"))
        .layer(header("cross-origin-opener-policy", "same-origin"))
        .layer(header("cache-control", "no-store"))
        .with_state(state)
}

/// Re-reads the SIP and web TLS certificates, keys and client CA (as SIGHUP does).
#[utoipa::path(post, path = "/api/tls/reload", tag = "config",
    responses(
        (status = 200, description = "Each TLS configuration, its new files in use",
            body = [crate::tls::ReloadOutcome]),
        (status = 404, description = "No TLS configured", body = ErrorDto),
        (status = 500, description = "A file did not load: its configuration keeps the old \
            certificate (the others were reloaded); the message names the file", body = ErrorDto),
    ))]
async fn reload_tls(
    State(st): State<AppState>,
) -> Result<Json<Vec<crate::tls::ReloadOutcome>>, ApiError> {
    let Some(reloader) = &st.0.options.tls_reloader else {
        return Err(ApiError::new(404, "no TLS is configured"));
    };
    let outcomes = reloader.reload_all();
    let refused: Vec<String> = (outcomes.iter())
        .filter_map(|o| Some(format!("{}: {}", o.what, o.error.as_ref()?)))
        .collect();
    if refused.is_empty() {
        return Ok(Json(outcomes));
    }
    // A script running `curl --fail` after renewing a certificate must see that it failed.
    Err(ApiError::new(
        500,
        format!(
            "TLS reload refused, the old certificate stays in use: {}",
            refused.join("; ")
        ),
    ))
}

/// Graceful drain (as SIGTERM): new INVITEs and OPTIONS get 503 with Retry-After, the calls
/// in progress go on until they end or the grace period runs out (then BYE), then the process
/// exits. `{"cancel": true}` takes new calls again. Send `{}` for the defaults.
#[utoipa::path(post, path = "/api/drain", tag = "config",
    request_body = DrainRequest,
    responses(
        (status = 200, description = "Whether new calls are taken now, and the drain", body = AvailabilityDto),
        (status = 400, description = "Not a drain request", body = ErrorDto),
    ))]
async fn drain(
    State(st): State<AppState>,
    JsonBody(request): JsonBody<DrainRequest>,
) -> Result<Json<AvailabilityDto>, ApiError> {
    Ok(Json(st.backend(move |b| b.drain(&request)).await??))
}

async fn not_found() -> ApiError {
    ApiError::new(404, "no such page or API endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(405, "method not allowed on this path")
}

async fn require_auth(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    match authenticate(&st, req.headers(), req.method()) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn authenticate(
    st: &AppState,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Principal, ApiError> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        // A bad bearer token is refused even with a valid cookie: the client asked to be
        // judged by the token.
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| {
                ApiError::new(401, "malformed Authorization header: use \"Bearer TOKEN\"")
            })?;
        return st
            .fresh_auth()
            .check_token(token)
            .map(|name| Principal::Token { name })
            .ok_or_else(|| ApiError::new(401, "invalid or revoked API token"));
    }
    if let Some(id) = cookie(headers, SESSION_COOKIE) {
        let csrf = st
            .sessions()
            .check(&id, Instant::now())
            .ok_or_else(|| ApiError::new(401, "your session has ended: log in again"))?;
        if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !presented.is_some_and(|p| auth::secret_eq(p, &csrf)) {
                return Err(ApiError::new(
                    403,
                    "missing or wrong X-CSRF-Token header (reload the page)",
                ));
            }
        }
        return Ok(Principal::Session { id, csrf });
    }
    Err(ApiError::new(
        401,
        "authentication required: log in, or send \"Authorization: Bearer TOKEN\"",
    ))
}

/// The value of cookie `name`, from any `Cookie` header.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().to_owned())
}

fn session_cookie(id: &str, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/{secure}")
}

fn auth_error(e: AuthError) -> ApiError {
    let status = match &e {
        AuthError::PasswordTooShort | AuthError::PasswordTooLong | AuthError::BadTokenName(_) => {
            400
        }
        AuthError::TokenExists(_) | AuthError::TooManyTokens => 409,
        AuthError::Read { .. }
        | AuthError::Write { .. }
        | AuthError::Corrupt { .. }
        | AuthError::Hash(_) => 500,
    };
    ApiError::new(status, e.to_string())
}

fn too_many_attempts(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = ApiError::new(
        429,
        format!("too many failed attempts: try again in {secs} s"),
    )
    .into_response();
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    r
}

// ---------------------------------------------------------------------------------------------
// The page

async fn page_index() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML)
}

async fn page_js() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS)
}

async fn page_css() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], STYLE_CSS)
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// Whether audio is leaving on time. For load balancers and monitors.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses(
        (status = 200, description = "Healthy", body = HealthDto),
        (status = 503, description = "Not healthy; `reasons` says why", body = HealthDto),
    ))]
async fn healthz(State(st): State<AppState>) -> Result<Response, ApiError> {
    let h = st.backend(|b| b.health()).await?;
    let status = if h.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(h)).into_response())
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "Not authenticated (unless `metrics_public`)", body = ErrorDto),
    ))]
async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    let text = st.backend(|b| b.metrics_text()).await?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi(State(st): State<AppState>) -> Response {
    ([(CONTENT_TYPE, "application/json")], st.0.openapi.clone()).into_response()
}

/// Logs in with the admin password: sets the session cookie and returns the CSRF token.
#[utoipa::path(post, path = "/api/login", tag = "session", security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in; `Set-Cookie: mohd_session=...`", body = LoginResponse),
        (status = 401, description = "Wrong password", body = ErrorDto),
        (status = 409, description = "No admin password set yet (`mohd passwd`)", body = ErrorDto),
        (status = 429, description = "Too many failed attempts; see `Retry-After`", body = ErrorDto),
    ))]
async fn login(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Response, ApiError> {
    let Some(phc) = st.fresh_auth().password_hash() else {
        return Err(ApiError::new(409, "no admin password set: run mohd passwd"));
    };
    if let Err(wait) = st.limiter().attempt(peer.ip(), Instant::now()) {
        return Ok(too_many_attempts(wait));
    }
    let ok = tokio::task::spawn_blocking(move || auth::verify_password_hash(&phc, &req.password))
        .await
        .map_err(internal)?;
    if !ok {
        tracing::warn!(%peer, "web login with a wrong password");
        return Err(ApiError::new(401, "wrong password"));
    }
    st.limiter().succeeded(peer.ip());
    let (id, csrf) = st.sessions().create(Instant::now());
    tracing::info!(%peer, "web login");
    Ok((
        [(SET_COOKIE, session_cookie(&id, st.0.options.https))],
        Json(LoginResponse { csrf_token: csrf }),
    )
        .into_response())
}

/// Ends the session (a no-op for a token).
#[utoipa::path(post, path = "/api/logout", tag = "session",
    responses((status = 204, description = "Logged out; the cookie is cleared")))]
async fn logout(State(st): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    if let Principal::Session { id, .. } = &p {
        st.sessions().remove(id);
    }
    let expired = format!("{}; Max-Age=0", session_cookie("", st.0.options.https));
    (StatusCode::NO_CONTENT, [(SET_COOKIE, expired)]).into_response()
}

/// Who is asking, and the CSRF token of the session (for a page that was reloaded).
#[utoipa::path(get, path = "/api/session", tag = "session",
    responses(
        (status = 200, description = "Authenticated", body = SessionDto),
        (status = 401, description = "Not authenticated", body = ErrorDto),
    ))]
async fn session(Extension(p): Extension<Principal>) -> Json<SessionDto> {
    Json(match p {
        Principal::Session { csrf, .. } => SessionDto {
            authenticated: true,
            csrf_token: Some(csrf),
            via: "session".into(),
        },
        Principal::Token { .. } => SessionDto {
            authenticated: true,
            csrf_token: None,
            via: "token".into(),
        },
    })
}

/// Health, channels with what plays now, calls on hold, line-out, registrations, disk.
#[utoipa::path(get, path = "/api/status", tag = "status",
    responses(
        (status = 200, description = "The server's state now", body = StatusDto),
        (status = 401, description = "Not authenticated", body = ErrorDto),
    ))]
async fn status(State(st): State<AppState>) -> Result<Json<StatusDto>, ApiError> {
    Ok(Json(st.backend(|b| b.status()).await?))
}

/// The library, in playlist order.
#[utoipa::path(get, path = "/api/tracks", tag = "library",
    responses((status = 200, description = "Every track", body = Vec<TrackDto>)))]
async fn list_tracks(State(st): State<AppState>) -> Result<Json<Vec<TrackDto>>, ApiError> {
    Ok(Json(st.backend(|b| b.tracks()).await?))
}

/// Uploads a music file: the raw file is the body. It is checked (decoded in isolation) before
/// it joins the playlist, at the end, enabled.
#[utoipa::path(post, path = "/api/tracks", tag = "library",
    params(UploadQuery),
    request_body(content = String, content_type = "application/octet-stream",
        description = "The audio file's bytes"),
    responses(
        (status = 201, description = "Added", body = TrackDto),
        (status = 400, description = "Bad file name", body = ErrorDto),
        (status = 409, description = "A track with this name (or this content) exists", body = ErrorDto),
        (status = 413, description = "Larger than `max_upload_mb`", body = ErrorDto),
        (status = 415, description = "Not audio mohd can decode (the decoder's reason)", body = ErrorDto),
        (status = 422, description = "Decoded but unusable (e.g. too long)", body = ErrorDto),
        (status = 507, description = "The disk is full", body = ErrorDto),
    ))]
async fn upload_track(
    State(st): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<TrackDto>), ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            400,
            format!(
                "name the file in the query, ?name=FILE.mp3 ({})",
                e.body_text()
            ),
        )
    })?;
    let cap = st.0.options.max_upload_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap) {
        // Refused before reading a byte; the client learns at once instead of after sending
        // the whole file (curl waits for this with `Expect: 100-continue`).
        return Err(too_big(cap));
    }
    let (name, overwrite) = (q.name, q.overwrite);
    let sink = st
        .backend(move |b| b.begin_upload(&name, overwrite))
        .await??;
    let sink = receive(body, sink, cap).await?;
    let track = st.backend(move |b| b.finish_upload(sink)).await??;
    tracing::info!(name = %track.name, id = %track.id, bytes = track.size_bytes, "upload accepted");
    Ok((StatusCode::CREATED, Json(track)))
}

fn too_big(cap: u64) -> ApiError {
    ApiError::new(
        413,
        format!(
            "the file is larger than the upload limit of {} MiB ([web] max_upload_mb)",
            cap.div_ceil(1024 * 1024)
        ),
    )
}

/// Streams the request body into `sink`: the socket is read here while a blocking task
/// writes, with a short queue between them. Stops at `cap` bytes whatever the headers said.
async fn receive(
    body: Body,
    sink: Box<dyn UploadSink>,
    cap: u64,
) -> Result<Box<dyn UploadSink>, ApiError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(UPLOAD_QUEUE);
    let writer = tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        while let Some(chunk) = rx.blocking_recv() {
            sink.write(&chunk)?;
        }
        Ok::<_, ApiError>(sink)
    });
    // `tx` is dropped when the reading ends, which ends the writer's loop.
    let read = forward_body(body, tx, cap).await;
    let written = writer.await.map_err(internal)?;
    // On any error the sink is dropped here, which removes its temporary file.
    read?;
    written
}

/// Passes the body's chunks to `tx` until its end, `cap` bytes, a stall of [`UPLOAD_IDLE`],
/// or the writer stopping (it reports its own error).
async fn forward_body(
    body: Body,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    cap: u64,
) -> Result<(), ApiError> {
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    loop {
        let frame = tokio::time::timeout(
            UPLOAD_IDLE,
            poll_fn(|cx| Pin::new(&mut stream).poll_frame(cx)),
        )
        .await
        .map_err(|_| {
            let idle = UPLOAD_IDLE.as_secs();
            ApiError::new(
                408,
                format!("the upload stalled: nothing received for {idle} s"),
            )
        })?;
        let Some(frame) = frame else {
            return Ok(());
        };
        let frame =
            frame.map_err(|e| ApiError::new(400, format!("the upload was cut off: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > cap {
            return Err(too_big(cap));
        }
        if tx.send(data).await.is_err() {
            return Ok(());
        }
    }
}

/// One track.
#[utoipa::path(get, path = "/api/tracks/{id}", tag = "library",
    params(("id" = String, Path, description = "Track id")),
    responses(
        (status = 200, description = "The track", body = TrackDto),
        (status = 404, description = "No such track", body = ErrorDto),
    ))]
async fn get_track(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TrackDto>, ApiError> {
    let lookup = id.clone();
    st.backend(move |b| b.track(&lookup))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(404, format!("no track with id {id:?}")))
}

/// Enables or disables a track in the playlist.
#[utoipa::path(patch, path = "/api/tracks/{id}", tag = "library",
    params(("id" = String, Path, description = "Track id")),
    request_body = TrackPatch,
    responses(
        (status = 200, description = "The changed track", body = TrackDto),
        (status = 404, description = "No such track", body = ErrorDto),
    ))]
async fn patch_track(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(p): JsonBody<TrackPatch>,
) -> Result<Json<TrackDto>, ApiError> {
    Ok(Json(
        st.backend(move |b| b.set_enabled(&id, p.enabled)).await??,
    ))
}

/// Deletes a track and its file.
#[utoipa::path(delete, path = "/api/tracks/{id}", tag = "library",
    params(("id" = String, Path, description = "Track id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such track", body = ErrorDto),
    ))]
async fn delete_track(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.backend(move |b| b.delete_track(&id)).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the playlist order.
#[utoipa::path(put, path = "/api/playlist", tag = "library",
    request_body = PlaylistOrder,
    responses(
        (status = 200, description = "The tracks in the new order", body = Vec<TrackDto>),
        (status = 400, description = "Not a permutation of every track id", body = ErrorDto),
    ))]
async fn put_playlist(
    State(st): State<AppState>,
    JsonBody(p): JsonBody<PlaylistOrder>,
) -> Result<Json<Vec<TrackDto>>, ApiError> {
    Ok(Json(st.backend(move |b| b.reorder(p.order)).await??))
}

/// The track as callers hear it: 8 kHz mono, normalised, as WAV.
#[utoipa::path(get, path = "/api/tracks/{id}/preview", tag = "library",
    params(("id" = String, Path, description = "Track id")),
    responses(
        (status = 200, description = "WAV audio", content_type = "audio/wav"),
        (status = 404, description = "No such track", body = ErrorDto),
    ))]
async fn preview(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let wav = st.backend(move |b| b.preview_wav(&id)).await??;
    Ok(([(CONTENT_TYPE, "audio/wav")], wav).into_response())
}

/// This box's library as a fleet manifest (tracks, managed channels and routes, shared
/// settings, a version), for boxes that follow it (`[library] follow`). Answers 304 to an
/// `If-None-Match` with the current `ETag`.
#[utoipa::path(get, path = "/api/library/export/manifest.json", tag = "library",
    responses(
        (status = 200, description = "The manifest, with its `ETag`", content_type = "application/json"),
        (status = 304, description = "Unchanged since the `If-None-Match` ETag"),
    ))]
async fn export_manifest(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let bytes = st.backend(|b| b.export_manifest()).await??;
    let etag = crate::library::manifest::etag_of(&bytes);
    let matches = headers
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let etag_header = (axum::http::header::ETAG, etag);
    // Followers revalidate every poll; nothing in between may serve a stale copy.
    let cache = (axum::http::header::CACHE_CONTROL, "no-cache");
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [etag_header], [cache]).into_response());
    }
    Ok((
        [(CONTENT_TYPE, "application/json".to_owned()), etag_header],
        [cache],
        bytes,
    )
        .into_response())
}

/// A track's file by its content's sha256 (as the manifest lists it), streamed.
#[utoipa::path(get, path = "/api/library/export/files/{sha256}", tag = "library",
    params(("sha256" = String, Path, description = "The file's sha256, 64 lowercase hex digits")),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 404, description = "No track has this content", body = ErrorDto),
    ))]
async fn export_file(
    State(st): State<AppState>,
    Path(sha256): Path<String>,
) -> Result<Response, ApiError> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ApiError::new(
            400,
            "expected a sha256: 64 lowercase hex digits",
        ));
    }
    let path = st.backend(move |b| b.export_file(&sha256)).await??;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::new(404, format!("cannot open the track's file: {e}")))?;
    let len = file.metadata().await.map_err(internal)?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (CONTENT_TYPE, "application/octet-stream".to_owned()),
            (CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Every channel: the config file's (read-only) and the managed ones, each with its playlist,
/// announcements, greeting, schedule, routes, and what it plays now and next.
#[utoipa::path(get, path = "/api/channels", tag = "channels",
    responses((status = 200, description = "Channels", body = Vec<ChannelDto>)))]
async fn channels(State(st): State<AppState>) -> Result<Json<Vec<ChannelDto>>, ApiError> {
    Ok(Json(st.backend(|b| b.channels()).await?))
}

/// Creates a managed channel. It is routable as soon as a route names it (`PUT /api/routes`).
#[utoipa::path(post, path = "/api/channels", tag = "channels",
    request_body = ChannelInput,
    responses(
        (status = 201, description = "Created", body = ChannelDto),
        (status = 400, description = "Not JSON", body = ErrorDto),
        (status = 409, description = "The name is taken (by a config file or managed channel)", body = ErrorDto),
        (status = 422, description = "Bad input, with the reason: bad name, unknown track id, unknown time zone or programme, overlapping schedule ranges", body = ErrorDto),
    ))]
async fn create_channel(
    State(st): State<AppState>,
    JsonBody(input): JsonBody<ChannelInput>,
) -> Result<(StatusCode, Json<ChannelDto>), ApiError> {
    let c = st.backend(move |b| b.create_channel(input)).await??;
    tracing::info!(channel = %c.name, "channel created");
    Ok((StatusCode::CREATED, Json(c)))
}

/// One channel.
#[utoipa::path(get, path = "/api/channels/{name}", tag = "channels",
    params(("name" = String, Path, description = "Channel name")),
    responses(
        (status = 200, description = "The channel", body = ChannelDto),
        (status = 404, description = "No such channel", body = ErrorDto),
    ))]
async fn get_channel(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ChannelDto>, ApiError> {
    Ok(Json(st.backend(move |b| b.channel(&name)).await??))
}

/// Replaces a managed channel's editable fields (those left out take their defaults); a
/// different `name` renames it. Calls on it keep playing and hear the change.
#[utoipa::path(put, path = "/api/channels/{name}", tag = "channels",
    params(("name" = String, Path, description = "Channel name")),
    request_body = ChannelInput,
    responses(
        (status = 200, description = "The changed channel", body = ChannelDto),
        (status = 403, description = "Defined in the config file (read-only here)", body = ErrorDto),
        (status = 404, description = "No such channel", body = ErrorDto),
        (status = 409, description = "The new name is taken", body = ErrorDto),
        (status = 422, description = "Bad input, with the reason", body = ErrorDto),
    ))]
async fn put_channel(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(input): JsonBody<ChannelInput>,
) -> Result<Json<ChannelDto>, ApiError> {
    let c = st
        .backend(move |b| b.replace_channel(&name, input))
        .await??;
    tracing::info!(channel = %c.name, "channel changed");
    Ok(Json(c))
}

/// Renames a managed channel; the routes to it follow.
#[utoipa::path(post, path = "/api/channels/{name}/rename", tag = "channels",
    params(("name" = String, Path, description = "Channel name")),
    request_body = ChannelRename,
    responses(
        (status = 200, description = "The renamed channel", body = ChannelDto),
        (status = 403, description = "Defined in the config file", body = ErrorDto),
        (status = 404, description = "No such channel", body = ErrorDto),
        (status = 409, description = "The new name is taken", body = ErrorDto),
        (status = 422, description = "Bad name", body = ErrorDto),
    ))]
async fn rename_channel(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ChannelRename>,
) -> Result<Json<ChannelDto>, ApiError> {
    Ok(Json(
        st.backend(move |b| b.rename_channel(&name, &req.name))
            .await??,
    ))
}

/// Sets a managed channel's playlist: library track ids, in order.
#[utoipa::path(put, path = "/api/channels/{name}/playlist", tag = "channels",
    params(("name" = String, Path, description = "Channel name")),
    request_body = ChannelPlaylist,
    responses(
        (status = 200, description = "The channel", body = ChannelDto),
        (status = 403, description = "Defined in the config file", body = ErrorDto),
        (status = 404, description = "No such channel", body = ErrorDto),
        (status = 422, description = "An unknown track id", body = ErrorDto),
    ))]
async fn put_channel_playlist(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(p): JsonBody<ChannelPlaylist>,
) -> Result<Json<ChannelDto>, ApiError> {
    Ok(Json(
        st.backend(move |b| b.set_channel_playlist(&name, p.tracks))
            .await??,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteChannelQuery {
    /// Also remove the managed routes that lead to it (else they refuse the deletion).
    #[serde(default)]
    pub remove_routes: bool,
}

/// Refused: routes lead to the channel.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoutedToDto {
    pub error: String,
    /// The routes leading to it, as match descriptions.
    pub routes: Vec<String>,
}

/// Deletes a managed channel. Calls on it keep the music they have until they end.
#[utoipa::path(delete, path = "/api/channels/{name}", tag = "channels",
    params(("name" = String, Path, description = "Channel name"), DeleteChannelQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Defined in the config file", body = ErrorDto),
        (status = 404, description = "No such channel", body = ErrorDto),
        (status = 409, description = "Routes lead to it (listed); delete with `?remove_routes=true` to remove them too", body = RoutedToDto),
    ))]
async fn delete_channel(
    State(st): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<DeleteChannelQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(400, e.body_text()))?;
    let channel = name.clone();
    match st
        .backend(move |b| b.delete_channel(&channel, q.remove_routes))
        .await?
    {
        Ok(()) => {
            tracing::info!(channel = %name, "channel deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(DeleteRefused::Error(e)) => Err(e),
        Err(DeleteRefused::RoutedTo(routes)) => {
            let error = format!(
                "routes lead to channel {name}: {}; remove them first, or delete with \
                 ?remove_routes=true",
                routes.join("; ")
            );
            Ok((StatusCode::CONFLICT, Json(RoutedToDto { error, routes })).into_response())
        }
    }
}

/// The managed routes, tried in this order after the config file's routes.
#[utoipa::path(get, path = "/api/routes", tag = "channels",
    responses((status = 200, description = "Managed routes", body = Vec<ManagedRouteDto>)))]
async fn get_routes(State(st): State<AppState>) -> Result<Json<Vec<ManagedRouteDto>>, ApiError> {
    Ok(Json(st.backend(|b| b.managed_routes()).await?))
}

/// Replaces the managed routes; calls are routed by them at once.
#[utoipa::path(put, path = "/api/routes", tag = "channels",
    request_body = Vec<ManagedRouteDto>,
    responses(
        (status = 200, description = "The managed routes now", body = Vec<ManagedRouteDto>),
        (status = 422, description = "A bad pattern or CIDR, no match key, or an unknown channel", body = ErrorDto),
    ))]
async fn put_routes(
    State(st): State<AppState>,
    JsonBody(routes): JsonBody<Vec<ManagedRouteDto>>,
) -> Result<Json<Vec<ManagedRouteDto>>, ApiError> {
    let routes = st.backend(move |b| b.set_managed_routes(routes)).await??;
    tracing::info!(routes = routes.len(), "managed routes replaced");
    Ok(Json(routes))
}

/// The dialplan: which requests go to which channel (the config file's routes, then the
/// managed ones, then the default).
#[utoipa::path(get, path = "/api/dialplan", tag = "channels",
    responses((status = 200, description = "Dialplan", body = DialplanDto)))]
async fn dialplan(State(st): State<AppState>) -> Result<Json<DialplanDto>, ApiError> {
    Ok(Json(st.backend(|b| b.dialplan()).await?))
}

/// The settings the admin can change.
#[utoipa::path(get, path = "/api/settings", tag = "config",
    responses((status = 200, description = "Settings", body = SettingsDto)))]
async fn get_settings(State(st): State<AppState>) -> Result<Json<SettingsDto>, ApiError> {
    Ok(Json(st.backend(|b| b.settings()).await?))
}

/// Changes the fields given; applies at once (re-render, line-out level).
#[utoipa::path(put, path = "/api/settings", tag = "config",
    request_body = SettingsDto,
    responses(
        (status = 200, description = "The new settings", body = SettingsDto),
        (status = 400, description = "A value out of range", body = ErrorDto),
    ))]
async fn put_settings(
    State(st): State<AppState>,
    JsonBody(patch): JsonBody<SettingsDto>,
) -> Result<Json<SettingsDto>, ApiError> {
    Ok(Json(st.backend(move |b| b.set_settings(patch)).await??))
}

/// The API tokens (never their secrets). Session only.
#[utoipa::path(get, path = "/api/tokens", tag = "admin",
    responses(
        (status = 200, description = "Tokens", body = Vec<TokenDto>),
        (status = 403, description = "Asked with a token", body = ErrorDto),
    ))]
async fn list_tokens(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<TokenDto>>, ApiError> {
    if !matches!(p, Principal::Session { .. }) {
        return Err(session_only());
    }
    Ok(Json(
        st.fresh_auth()
            .list_tokens()
            .into_iter()
            .map(|t| TokenDto {
                name: t.name,
                created: t.created_unix,
            })
            .collect(),
    ))
}

/// Makes an API token; the answer is the only time it is shown. Session only.
#[utoipa::path(post, path = "/api/tokens", tag = "admin",
    request_body = NewToken,
    responses(
        (status = 200, description = "The new token", body = CreatedToken),
        (status = 400, description = "Bad name", body = ErrorDto),
        (status = 403, description = "Asked with a token", body = ErrorDto),
        (status = 409, description = "The name is taken, or too many tokens", body = ErrorDto),
    ))]
async fn create_token(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    JsonBody(req): JsonBody<NewToken>,
) -> Result<Json<CreatedToken>, ApiError> {
    if !matches!(p, Principal::Session { .. }) {
        return Err(session_only());
    }
    let store = st.0.auth.clone();
    let name = req.name;
    let token = tokio::task::spawn_blocking({
        let name = name.clone();
        move || lock(&store).new_token(&name)
    })
    .await
    .map_err(internal)?
    .map_err(auth_error)?;
    tracing::info!(token = %name, "API token created");
    Ok(Json(CreatedToken { name, token }))
}

/// Revokes an API token. Session only.
#[utoipa::path(delete, path = "/api/tokens/{name}", tag = "admin",
    params(("name" = String, Path, description = "Token name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Asked with a token", body = ErrorDto),
        (status = 404, description = "No such token", body = ErrorDto),
    ))]
async fn revoke_token(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !matches!(p, Principal::Session { .. }) {
        return Err(session_only());
    }
    let store = st.0.auth.clone();
    let found = tokio::task::spawn_blocking({
        let name = name.clone();
        move || lock(&store).revoke_token(&name)
    })
    .await
    .map_err(internal)?
    .map_err(auth_error)?;
    if !found {
        return Err(ApiError::new(404, format!("no API token named {name:?}")));
    }
    tracing::info!(token = %name, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Changes the admin password; other sessions are logged out. Session only.
#[utoipa::path(post, path = "/api/password", tag = "admin",
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "The new password is too short or too long", body = ErrorDto),
        (status = 403, description = "Wrong current password, or asked with a token", body = ErrorDto),
        (status = 429, description = "Too many wrong attempts; see `Retry-After`", body = ErrorDto),
    ))]
async fn change_password(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(req): JsonBody<PasswordChange>,
) -> Result<Response, ApiError> {
    let Principal::Session { id, .. } = p else {
        return Err(session_only());
    };
    // The same limiter as the login: a stolen session must not become a password oracle.
    if let Err(wait) = st.limiter().attempt(peer.ip(), Instant::now()) {
        return Ok(too_many_attempts(wait));
    }
    let phc = st.fresh_auth().password_hash();
    let store = st.0.auth.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        if !phc.is_some_and(|h| auth::verify_password_hash(&h, &req.current)) {
            return None;
        }
        Some(auth::hash_password(&req.new).and_then(|new| lock(&store).set_password_hash(new)))
    })
    .await
    .map_err(internal)?;
    let Some(result) = outcome else {
        return Err(ApiError::new(403, "the current password is wrong"));
    };
    st.limiter().succeeded(peer.ip());
    result.map_err(auth_error)?;
    st.sessions().remove_all_except(Some(&id));
    tracing::info!(%peer, "admin password changed from the web page");
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------------------------------------
// OpenAPI

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mohd",
        description = "Music-on-hold server: library, channels, routes, status, settings. Authenticate \
            with `Authorization: Bearer TOKEN` (make one with `mohd token new NAME` or on the \
            admin page), or log in with POST /api/login and send the `mohd_session` cookie plus \
            `X-CSRF-Token` on every request that changes something.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        healthz, metrics, openapi, login, logout, session, status, list_tracks, upload_track,
        get_track, patch_track, delete_track, put_playlist, preview, channels, create_channel,
        get_channel, put_channel, rename_channel, put_channel_playlist, delete_channel, reload_tls,
        drain,
        get_routes, put_routes, dialplan, get_settings, put_settings, list_tokens, create_token,
        revoke_token, change_password, export_manifest, export_file
    ),
    components(schemas(
        ChannelStatusDto, ChannelNextDto, ScheduleChangeDto, TrackRefDto, ChannelMode, SwitchAt,
        AnnouncementsDto, AnnouncementsInput, ProgrammeDto, ProgrammeInput, ScheduleDto,
        WeeklyDto, DatedDto
    )),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "health", description = "Health and metrics, for monitors"),
        (name = "session", description = "Logging in from a browser"),
        (name = "status", description = "What the server is doing"),
        (name = "library", description = "Music files and the playlist"),
        (name = "channels", description = "Channels (config file and managed), routes, dialplan"),
        (name = "config", description = "Settings"),
        (name = "admin", description = "Password and API tokens (session only)"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token (`mohd token new NAME`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                SESSION_COOKIE,
                "Set by POST /api/login; state changes also need the X-CSRF-Token header",
            ))),
        );
    }
}

/// The OpenAPI 3.1 document of the API, as served at `/api/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot render the OpenAPI document: {e}\"}}"))
}

#[cfg(test)]
mod tests {
    //! Against the real listener (127.0.0.1:0) with a raw HTTP/1.1 client, so the tests see
    //! exactly what curl or a browser would: status, headers, body.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::watch;

    use super::super::auth::AuthStore;
    use super::super::backend::Backend;
    use super::super::backend::fake::{DISK_FULL_NAME, FakeBackend, NOT_AUDIO};
    use super::super::{WebConfig, WebError, WebHandle, serve};

    const PASSWORD: &str = "correct horse battery staple";
    const CAP: u64 = 256 * 1024;

    struct Server {
        addr: SocketAddr,
        token: String,
        fake: Arc<FakeBackend>,
        dir: tempfile::TempDir,
        stop: watch::Sender<bool>,
        handle: WebHandle,
    }

    struct Options {
        metrics_public: bool,
        password: bool,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    }

    fn web_config(listen: SocketAddr, o: &Options) -> WebConfig {
        WebConfig {
            listen,
            tls: o.tls.clone(),
            metrics_public: o.metrics_public,
            max_upload_bytes: CAP,
            tls_reloader: None,
        }
    }

    const PLAIN: Options = Options {
        metrics_public: false,
        password: true,
        tls: None,
    };

    async fn start(o: Options) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut auth = AuthStore::open(dir.path()).unwrap();
        if o.password {
            auth.set_password(PASSWORD).unwrap();
        }
        let token = auth.new_token("tests").unwrap();
        let fake = Arc::new(FakeBackend::new());
        fake.add("first.wav", 10.0);
        fake.add("second.mp3", 20.0);
        fake.add("third.flac", 30.0);
        let (stop, rx) = watch::channel(false);
        let any_port = "127.0.0.1:0".parse().unwrap();
        let handle = serve(web_config(any_port, &o), fake.clone(), auth, rx)
            .await
            .unwrap();
        Server {
            addr: handle.addr,
            token,
            fake,
            dir,
            stop,
            handle,
        }
    }

    #[derive(Debug)]
    struct Resp {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Resp {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
        }
        fn error(&self) -> String {
            self.json()["error"]
                .as_str()
                .unwrap_or_else(|| panic!("no error message: {}", self.text()))
                .to_owned()
        }
    }

    /// Who asks.
    #[derive(Debug, Clone, Default)]
    struct Who {
        bearer: Option<String>,
        cookie: Option<String>,
        csrf: Option<String>,
    }

    fn nobody() -> Who {
        Who::default()
    }

    fn bearer(t: &str) -> Who {
        Who {
            bearer: Some(t.to_owned()),
            ..Who::default()
        }
    }

    fn head(method: &str, path: &str, who: &Who, extra: &[(&str, &str)]) -> String {
        let mut h = format!("{method} {path} HTTP/1.1\r\nHost: mohd\r\nConnection: close\r\n");
        if let Some(t) = &who.bearer {
            h.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(c) = &who.cookie {
            h.push_str(&format!("Cookie: {c}\r\n"));
        }
        if let Some(c) = &who.csrf {
            h.push_str(&format!("X-CSRF-Token: {c}\r\n"));
        }
        for (n, v) in extra {
            h.push_str(&format!("{n}: {v}\r\n"));
        }
        h
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        mut s: S,
        head: String,
        body: &[u8],
    ) -> Resp {
        s.write_all(head.as_bytes()).await.unwrap();
        // The server may answer (413) and close before taking the whole body.
        let _ = s.write_all(body).await;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        parse(&raw)
    }

    fn parse(raw: &[u8]) -> Resp {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        assert!(
            !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")),
            "chunked responses are not expected here"
        );
        Resp {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        }
    }

    /// The client side of the tests: one request per connection, as [`exchange`] sends it.
    impl Server {
        async fn request(
            &self,
            method: &str,
            path: &str,
            who: &Who,
            content_type: Option<&str>,
            body: &[u8],
        ) -> Resp {
            let mut extra = Vec::new();
            let len = body.len().to_string();
            if let Some(ct) = content_type {
                extra.push(("Content-Type", ct));
            }
            if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
                extra.push(("Content-Length", len.as_str()));
            }
            let s = TcpStream::connect(self.addr).await.unwrap();
            exchange(s, head(method, path, who, &extra) + "\r\n", body).await
        }

        async fn get(&self, path: &str, who: &Who) -> Resp {
            self.request("GET", path, who, None, b"").await
        }

        async fn delete(&self, path: &str, who: &Who) -> Resp {
            self.request("DELETE", path, who, None, b"").await
        }

        async fn send(&self, method: &str, path: &str, who: &Who, body: serde_json::Value) -> Resp {
            let b = body.to_string();
            let json = Some("application/json");
            self.request(method, path, who, json, b.as_bytes()).await
        }

        async fn post(&self, path: &str, who: &Who, body: serde_json::Value) -> Resp {
            self.send("POST", path, who, body).await
        }

        async fn put(&self, path: &str, who: &Who, body: serde_json::Value) -> Resp {
            self.send("PUT", path, who, body).await
        }

        async fn patch(&self, path: &str, who: &Who, body: serde_json::Value) -> Resp {
            self.send("PATCH", path, who, body).await
        }

        /// `POST` of a file's bytes, as the page's upload does.
        async fn upload(&self, path: &str, who: &Who, body: &[u8]) -> Resp {
            let octets = Some("application/octet-stream");
            self.request("POST", path, who, octets, body).await
        }

        /// A login attempt from a browser without a session.
        async fn login_as(&self, password: impl Into<serde_json::Value>) -> Resp {
            let body = serde_json::json!({ "password": password.into() });
            self.post("/api/login", &nobody(), body).await
        }
    }

    async fn login(s: &Server) -> (Who, String) {
        let r = s.login_as(PASSWORD).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let set_cookie = r
            .header("set-cookie")
            .expect("login sets a cookie")
            .to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let csrf = r.json()["csrf_token"].as_str().unwrap().to_owned();
        (
            Who {
                bearer: None,
                cookie: Some(cookie),
                csrf: Some(csrf),
            },
            set_cookie,
        )
    }

    /// Every route of the contract but the public ones, with a body the handler would accept.
    fn protected() -> Vec<(&'static str, String, serde_json::Value)> {
        use serde_json::json;
        let id = "000000000000";
        vec![
            ("GET", "/api/status".into(), json!(null)),
            ("GET", "/api/session".into(), json!(null)),
            ("POST", "/api/logout".into(), json!(null)),
            ("GET", "/api/tracks".into(), json!(null)),
            ("POST", "/api/tracks?name=a.wav".into(), json!(null)),
            ("GET", format!("/api/tracks/{id}"), json!(null)),
            (
                "PATCH",
                format!("/api/tracks/{id}"),
                json!({"enabled": false}),
            ),
            ("DELETE", format!("/api/tracks/{id}"), json!(null)),
            ("GET", format!("/api/tracks/{id}/preview"), json!(null)),
            ("PUT", "/api/playlist".into(), json!({"order": []})),
            ("GET", "/api/channels".into(), json!(null)),
            ("POST", "/api/channels".into(), json!({"name": "x"})),
            ("GET", "/api/channels/default".into(), json!(null)),
            ("PUT", "/api/channels/x".into(), json!({})),
            ("DELETE", "/api/channels/x".into(), json!(null)),
            (
                "POST",
                "/api/channels/x/rename".into(),
                json!({"name": "y"}),
            ),
            (
                "PUT",
                "/api/channels/x/playlist".into(),
                json!({"tracks": []}),
            ),
            ("GET", "/api/routes".into(), json!(null)),
            ("PUT", "/api/routes".into(), json!([])),
            ("GET", "/api/dialplan".into(), json!(null)),
            ("GET", "/api/settings".into(), json!(null)),
            (
                "PUT",
                "/api/settings".into(),
                json!({"loudness_lufs": -20.0}),
            ),
            ("GET", "/api/tokens".into(), json!(null)),
            ("POST", "/api/tokens".into(), json!({"name": "x"})),
            ("DELETE", "/api/tokens/tests".into(), json!(null)),
            (
                "POST",
                "/api/password".into(),
                json!({"current": "a", "new": "b"}),
            ),
            ("GET", "/metrics".into(), json!(null)),
            ("POST", "/api/tls/reload".into(), json!(null)),
        ]
    }

    #[tokio::test]
    async fn every_endpoint_but_health_openapi_login_and_the_page_needs_auth() {
        let s = start(PLAIN).await;
        let tracks_before = s.fake.tracks();
        for (method, path, body) in protected() {
            for who in [
                nobody(),
                bearer("mohd_not-a-real-token"),
                Who {
                    cookie: Some("mohd_session=forged".into()),
                    csrf: Some("x".into()),
                    ..nobody()
                },
            ] {
                let r = s.send(method, &path, &who, body.clone()).await;
                assert_eq!(r.status, 401, "{method} {path} as {who:?}: {}", r.text());
                assert!(!r.error().is_empty());
                assert!(
                    r.header("www-authenticate")
                        .is_some_and(|v| v.starts_with("Bearer"))
                );
            }
        }
        // Nothing was changed by the refused requests.
        assert_eq!(s.fake.tracks(), tracks_before);

        assert_eq!(s.get("/healthz", &nobody()).await.status, 200);
        assert_eq!(s.get("/api/openapi.json", &nobody()).await.status, 200);
        assert_eq!(s.get("/", &nobody()).await.status, 200);
        assert_eq!(s.get("/app.js", &nobody()).await.status, 200);
        assert_eq!(s.get("/style.css", &nobody()).await.status, 200);
    }

    #[tokio::test]
    async fn a_token_reads_every_endpoint() {
        let s = start(PLAIN).await;
        let who = bearer(&s.token);
        for path in [
            "/api/status",
            "/api/tracks",
            "/api/channels",
            "/api/dialplan",
            "/api/settings",
            "/metrics",
        ] {
            let r = s.get(path, &who).await;
            assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        }
        let st = s.get("/api/status", &who).await.json();
        assert_eq!(st["health"]["healthy"], true);
        assert_eq!(st["channels"][0]["name"], "default");
        assert_eq!(st["channels"][0]["playing"]["track"], "first.wav");
        assert_eq!(st["calls"][0]["codec"], "PCMU");
        assert!(st["lineout"].is_null());
        assert_eq!(st["disk"]["total_bytes"], 1u64 << 32);
        let sess = s.get("/api/session", &who).await.json();
        assert_eq!(sess["via"], "token");
        assert_eq!(sess["authenticated"], true);
        let ch = s.get("/api/channels", &who).await.json();
        assert_eq!(ch[0]["music"], "library");
        assert_eq!(ch[0]["default"], true);
        let dp = s.get("/api/dialplan", &who).await.json();
        assert_eq!(dp["routes"][0]["match"], "user=moh");
        assert_eq!(dp["default_channel"], "default");
    }

    #[tokio::test]
    async fn a_token_changes_tracks_playlist_and_settings_without_csrf() {
        use serde_json::json;
        let s = start(PLAIN).await;
        let who = bearer(&s.token);
        let ids: Vec<String> = s.fake.tracks().iter().map(|t| t.id.clone()).collect();
        let r = s
            .patch(
                &format!("/api/tracks/{}", ids[1]),
                &who,
                json!({"enabled": false}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["enabled"], false);
        assert!(!s.fake.track(&ids[1]).unwrap().enabled);
        let rev: Vec<&String> = ids.iter().rev().collect();
        let r = s.put("/api/playlist", &who, json!({"order": rev})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let names: Vec<String> = s.fake.tracks().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, ["third.flac", "second.mp3", "first.wav"]);
        let r = s
            .put("/api/playlist", &who, json!({"order": [ids[0]]}))
            .await;
        assert_eq!(r.status, 400);
        assert!(r.error().contains("permutation"));
        let r = s
            .get(&format!("/api/tracks/{}/preview", ids[0]), &who)
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("audio/wav"));
        assert_eq!(&r.body[..4], b"RIFF");
        let r = s
            .put("/api/settings", &who, json!({"loudness_lufs": -20.0}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["loudness_lufs"], -20.0);
        assert_eq!(r.json()["lineout_device"], "default");
        let r = s
            .put("/api/settings", &who, json!({"loudness_lufs": 3.0}))
            .await;
        assert_eq!(r.status, 400);
        let r = s.put("/api/settings", &who, json!({"loudnes": -3.0})).await;
        assert_eq!(r.status, 422, "unknown field refused: {}", r.text());
        assert!(!r.error().is_empty());
        let r = s.delete(&format!("/api/tracks/{}", ids[0]), &who).await;
        assert_eq!(r.status, 204);
        assert!(s.fake.track(&ids[0]).is_none());
        let r = s.get(&format!("/api/tracks/{}", ids[0]), &who).await;
        assert_eq!(r.status, 404);
        assert!(r.error().contains(&ids[0]));
        let r = s.get(&format!("/api/tracks/{}", ids[2]), &who).await;
        assert_eq!(r.json()["name"], "third.flac");
    }

    #[tokio::test]
    async fn a_token_cannot_see_mint_or_revoke_tokens_nor_change_the_password() {
        use serde_json::json;
        let s = start(PLAIN).await;
        let who = bearer(&s.token);
        for (method, path, body) in [
            ("GET", "/api/tokens", json!(null)),
            ("POST", "/api/tokens", json!({"name": "more"})),
            ("DELETE", "/api/tokens/tests", json!(null)),
            (
                "POST",
                "/api/password",
                json!({"current": PASSWORD, "new": "another password"}),
            ),
        ] {
            let r = s.send(method, path, &who, body).await;
            assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        }
        let store = AuthStore::open(s.dir.path()).unwrap();
        assert_eq!(store.list_tokens().len(), 1);
        assert!(store.verify_password(PASSWORD));
    }

    #[tokio::test]
    async fn a_session_needs_its_csrf_token_to_change_anything() {
        use serde_json::json;
        let s = start(PLAIN).await;
        let (session, set_cookie) = login(&s).await;
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set_cookie.contains(attr), "{set_cookie}");
        }
        assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
        // Reading needs no CSRF token.
        let cookie_only = Who {
            csrf: None,
            ..session.clone()
        };
        assert_eq!(s.get("/api/status", &cookie_only).await.status, 200);
        let r = s.get("/api/session", &cookie_only).await.json();
        assert_eq!(r["via"], "session");
        assert_eq!(r["csrf_token"].as_str(), session.csrf.as_deref());
        // Changing does.
        let wrong = Who {
            csrf: Some("not-the-token".into()),
            ..session.clone()
        };
        for who in [&cookie_only, &wrong] {
            let r = s
                .put("/api/settings", who, json!({"loudness_lufs": -23.0}))
                .await;
            assert_eq!(r.status, 403, "{}", r.text());
            assert!(r.error().contains("CSRF"));
            let r = s.post("/api/tokens", who, json!({"name": "fleet"})).await;
            assert_eq!(r.status, 403);
        }
        assert_eq!(s.fake.settings().loudness_lufs, Some(-18.0));
        let r = s
            .put("/api/settings", &session, json!({"loudness_lufs": -23.0}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(s.fake.settings().loudness_lufs, Some(-23.0));
    }

    #[tokio::test]
    async fn a_session_makes_lists_and_revokes_tokens() {
        use serde_json::json;
        let s = start(PLAIN).await;
        let (session, _) = login(&s).await;
        let r = s
            .post("/api/tokens", &session, json!({"name": "fleet"}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let token = r.json()["token"].as_str().unwrap().to_owned();
        assert_eq!(s.get("/api/tracks", &bearer(&token)).await.status, 200);
        let r = s
            .post("/api/tokens", &session, json!({"name": "fleet"}))
            .await;
        assert_eq!(r.status, 409, "{}", r.text());
        let r = s
            .post("/api/tokens", &session, json!({"name": "no spaces"}))
            .await;
        assert_eq!(r.status, 400, "{}", r.text());
        let list = s.get("/api/tokens", &session).await;
        let names: Vec<String> = list
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["tests", "fleet"]);
        assert!(list.json()[1]["created"].as_u64().unwrap() > 1_700_000_000);
        assert!(!list.text().contains(&token), "the list leaks a secret");
        let r = s.delete("/api/tokens/fleet", &session).await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(s.get("/api/tracks", &bearer(&token)).await.status, 401);
        let r = s.delete("/api/tokens/fleet", &session).await;
        assert_eq!(r.status, 404);
    }

    #[tokio::test]
    async fn a_bad_bearer_token_beats_a_good_cookie_and_logout_ends_the_session() {
        let s = start(PLAIN).await;
        let (session, _) = login(&s).await;
        // A bad bearer token is refused even alongside a good cookie.
        let both = Who {
            bearer: Some("mohd_wrong".into()),
            ..session.clone()
        };
        assert_eq!(s.get("/api/status", &both).await.status, 401);

        // Logout ends the session and clears the cookie.
        let r = s.request("POST", "/api/logout", &session, None, b"").await;
        assert_eq!(r.status, 204);
        assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
        assert_eq!(s.get("/api/status", &session).await.status, 401);
    }

    #[tokio::test]
    async fn wrong_passwords_are_refused_then_rate_limited() {
        let s = start(PLAIN).await;
        let r = s.login_as("guess").await;
        assert_eq!(r.status, 401);
        assert!(r.header("set-cookie").is_none());
        assert!(r.error().contains("wrong password"));
        let mut limited = None;
        for i in 0..10 {
            let r = s.login_as(format!("guess{i}")).await;
            if r.status == 429 {
                limited = Some(r);
                break;
            }
            assert_eq!(r.status, 401);
        }
        let r = limited.expect("guessing was never slowed down");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(r.error().contains("try again"));
        // While limited, even the right password waits: a guess cannot be confirmed.
        let r = s.login_as(PASSWORD).await;
        assert_eq!(r.status, 429);
        // Scripts with a token are not locked out.
        assert_eq!(s.get("/api/status", &bearer(&s.token)).await.status, 200);
        // Malformed login bodies are JSON errors.
        let r = s
            .request(
                "POST",
                "/api/login",
                &nobody(),
                Some("application/json"),
                b"{",
            )
            .await;
        assert_eq!(r.status, 400);
        assert!(!r.error().is_empty());
    }

    #[tokio::test]
    async fn login_without_a_password_set_says_how_to_set_one() {
        let s = start(Options {
            password: false,
            ..PLAIN
        })
        .await;
        let r = s.login_as("anything").await;
        assert_eq!(r.status, 409);
        assert_eq!(r.error(), "no admin password set: run mohd passwd");
    }

    #[tokio::test]
    async fn password_change_from_a_session() {
        use serde_json::json;
        let s = start(PLAIN).await;
        let (me, _) = login(&s).await;
        let (other, _) = login(&s).await;
        // Refused: a wrong current password, a too-short new one; then done.
        for (current, new, status, words) in [
            ("wrong one", "a new password", 403, Some("current password")),
            (PASSWORD, "short", 400, Some("too short")),
            (PASSWORD, "a new password", 204, None),
        ] {
            let change = json!({"current": current, "new": new});
            let r = s.post("/api/password", &me, change).await;
            assert_eq!(r.status, status, "{}", r.text());
            if let Some(words) = words {
                assert!(r.error().contains(words), "{}", r.error());
            }
        }
        // This session goes on, the other browser must log in again.
        assert_eq!(s.get("/api/status", &me).await.status, 200);
        assert_eq!(s.get("/api/status", &other).await.status, 401);
        let r = s.login_as(PASSWORD).await;
        assert_eq!(r.status, 401);
        let r = s.login_as("a new password").await;
        assert_eq!(r.status, 200);
        assert!(
            AuthStore::open(s.dir.path())
                .unwrap()
                .verify_password("a new password")
        );
    }

    #[tokio::test]
    async fn uploads_stream_to_the_sink_and_errors_map_to_statuses() {
        let s = start(PLAIN).await;
        let who = bearer(&s.token);
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let r = s
            .upload("/api/tracks?name=new%20song.wav", &who, &body)
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let t = r.json();
        assert_eq!(t["name"], "new song.wav");
        assert_eq!(t["size_bytes"], 200_000);
        assert_eq!(s.fake.tracks().last().unwrap().name, "new song.wav");
        assert!(
            s.fake.writes.load(Ordering::Relaxed) > 1,
            "200 kB reached the sink in one piece: it was buffered"
        );

        let count = s.fake.tracks().len();
        let disk_full = format!("/api/tracks?name={DISK_FULL_NAME}");
        let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            (
                "/api/tracks?name=noise.mp3",
                [NOT_AUDIO, b"rest"].concat(),
                415,
                "not an audio file",
            ),
            (disk_full.as_str(), body.clone(), 507, "disk is full"),
            ("/api/tracks?name=first.wav", body.clone(), 409, "exists"),
            (
                "/api/tracks?name=..%2Fetc%2Fpasswd",
                body.clone(),
                400,
                "bad file name",
            ),
            ("/api/tracks", body.clone(), 400, "?name="),
            (
                "/api/tracks?name=big.wav",
                vec![1u8; CAP as usize + 1],
                413,
                "upload limit",
            ),
        ];
        for (path, body, status, words) in &cases {
            let r = s.upload(path, &who, body).await;
            assert_eq!(r.status, *status, "{path}: {}", r.text());
            assert!(r.error().contains(words), "{path}: {}", r.error());
        }
        assert_eq!(
            s.fake.tracks().len(),
            count,
            "a refused upload changed the library"
        );
        // Overwrite when asked.
        let r = s
            .upload(
                "/api/tracks?name=first.wav&overwrite=true",
                &who,
                b"new content",
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(s.fake.tracks()[0].size_bytes, 11, "replaced in place");
    }

    #[tokio::test]
    async fn an_upload_over_the_cap_is_refused_whatever_the_client_declares() {
        let s = start(PLAIN).await;
        let who = bearer(&s.token);
        // A declared length over the cap: refused before any byte of the body is sent.
        let too_long = (CAP + 1).to_string();
        let h = head(
            "POST",
            "/api/tracks?name=big.wav",
            &who,
            &[("Content-Length", too_long.as_str())],
        ) + "\r\n";
        let r = exchange(TcpStream::connect(s.addr).await.unwrap(), h, b"").await;
        assert_eq!(r.status, 413, "{}", r.text());
        // No length at all (chunked): counted while streaming.
        let h = head(
            "POST",
            "/api/tracks?name=big.wav",
            &who,
            &[("Transfer-Encoding", "chunked")],
        ) + "\r\n";
        let mut chunked = Vec::new();
        let piece = vec![b'x'; 16 * 1024];
        for _ in 0..(CAP as usize / piece.len() + 2) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(&piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let r = exchange(
            TcpStream::connect(s.addr).await.unwrap(),
            h.clone(),
            &chunked,
        )
        .await;
        assert_eq!(r.status, 413, "{}", r.text());
        assert!(s.fake.tracks().iter().all(|t| t.name != "big.wav"));
        // The same chunked framing under the cap is accepted.
        let small = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let r = exchange(TcpStream::connect(s.addr).await.unwrap(), h, small).await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["size_bytes"], 11);
        // A JSON body over 64 KiB is refused on the JSON routes.
        let big = format!("{{\"order\": [\"{}\"]}}", "a".repeat(70 * 1024));
        let r = s
            .request(
                "PUT",
                "/api/playlist",
                &who,
                Some("application/json"),
                big.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 413, "{}", r.text());
        assert!(!r.error().is_empty());
    }

    #[tokio::test]
    async fn the_page_is_served_with_security_headers() {
        let s = start(PLAIN).await;
        let r = s.get("/", &nobody()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let csp = r.header("content-security-policy").expect("CSP");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        let html = r.text();
        assert!(
            html.contains("src=\"/app.js\""),
            "the page loads its script"
        );
        assert!(!html.contains("<script>"), "inline script in the page");
        let inline_handler = html.split(" on").skip(1).any(|rest| {
            let word: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !word.is_empty() && rest[word.len()..].starts_with('=')
        });
        assert!(
            !inline_handler,
            "inline event handler in the page (CSP blocks it)"
        );
        for id in [
            "login-password",
            "login-submit",
            "health",
            "calls-table",
            "upload-input",
            "tracks-table",
        ] {
            assert!(
                html.contains(&format!("data-testid=\"{id}\"")),
                "no {id} in the page"
            );
        }
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "the page loads something external"
        );
        let js = s.get("/app.js", &nobody()).await;
        assert!(
            js.header("content-type")
                .unwrap()
                .starts_with("text/javascript")
        );
        assert!(js.text().contains("/api/status"));
        let api = s.get("/api/status", &bearer(&s.token)).await;
        assert_eq!(api.header("cache-control"), Some("no-store"));
        assert_eq!(api.header("x-content-type-options"), Some("nosniff"));
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_get_json_errors() {
        let s = start(PLAIN).await;
        for who in [nobody(), bearer(&s.token)] {
            let r = s.get("/api/nothing-here", &who).await;
            assert_eq!(r.status, 404);
            assert!(!r.error().is_empty());
        }
        let r = s.delete("/api/status", &bearer(&s.token)).await;
        assert_eq!(r.status, 405);
        assert!(!r.error().is_empty());
    }

    #[tokio::test]
    async fn openapi_document_lists_every_contract_route() {
        let s = start(PLAIN).await;
        let doc = s.get("/api/openapi.json", &nobody()).await.json();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().unwrap();
        let contract = [
            ("get", "/healthz"),
            ("get", "/metrics"),
            ("get", "/api/openapi.json"),
            ("post", "/api/login"),
            ("post", "/api/logout"),
            ("get", "/api/session"),
            ("get", "/api/status"),
            ("get", "/api/tracks"),
            ("post", "/api/tracks"),
            ("get", "/api/tracks/{id}"),
            ("patch", "/api/tracks/{id}"),
            ("delete", "/api/tracks/{id}"),
            ("put", "/api/playlist"),
            ("get", "/api/tracks/{id}/preview"),
            ("get", "/api/channels"),
            ("post", "/api/channels"),
            ("get", "/api/channels/{name}"),
            ("put", "/api/channels/{name}"),
            ("delete", "/api/channels/{name}"),
            ("post", "/api/channels/{name}/rename"),
            ("put", "/api/channels/{name}/playlist"),
            ("get", "/api/routes"),
            ("put", "/api/routes"),
            ("get", "/api/dialplan"),
            ("get", "/api/settings"),
            ("put", "/api/settings"),
            ("get", "/api/tokens"),
            ("post", "/api/tokens"),
            ("delete", "/api/tokens/{name}"),
            ("post", "/api/password"),
            ("post", "/api/tls/reload"),
            ("post", "/api/drain"),
            ("get", "/api/library/export/manifest.json"),
            ("get", "/api/library/export/files/{sha256}"),
        ];
        for (method, path) in contract {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "missing {method} {path}"
            );
        }
        let n: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(
            n,
            contract.len(),
            "routes in the document but not in the contract"
        );
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["session"]["in"], "cookie");
        assert_eq!(schemes["session"]["name"], "mohd_session");
        // The public routes say so; the others inherit the global requirement.
        assert_eq!(
            paths["/healthz"]["get"]["security"],
            serde_json::json!([{}])
        );
        assert_eq!(
            paths["/api/login"]["post"]["security"],
            serde_json::json!([{}])
        );
        assert!(doc["security"].as_array().unwrap().len() == 2);
        // Every schema reference resolves.
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        for name in [
            "TrackDto",
            "StatusDto",
            "ChannelDto",
            "ErrorDto",
            "SettingsDto",
            "ChannelInput",
            "ScheduleDto",
            "ManagedRouteDto",
            "RoutedToDto",
            "ScheduleChangeDto",
        ] {
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        let route = &schemas["RouteDto"]["properties"];
        assert!(route.get("match").is_some(), "RouteDto: {route}");
    }

    #[tokio::test]
    async fn channels_and_routes_are_managed_with_clear_refusals() {
        let s = start(PLAIN).await;
        let who = bearer(&s.token);
        let ids: Vec<String> = s.fake.tracks().iter().map(|t| t.id.clone()).collect();
        // The config file's channel is listed, read-only.
        let list = s.get("/api/channels", &who).await.json();
        assert_eq!(list[0]["name"], "default");
        assert_eq!(list[0]["origin"], "config-file");
        assert_eq!(list[0]["read_only"], true);

        let body = serde_json::json!({
            "name": "sales", "mode": "from-start", "shuffle": true, "playlist": [ids[0], ids[1]],
            "announcements": {"clips": [ids[2]], "every_seconds": 30},
            "schedule": {"timezone": "Europe/London", "default": "main",
                "weekly": [{"days": "mon-fri", "from": "09:00", "to": "17:00", "programme": "main"}]},
        });
        let r = s.post("/api/channels", &who, body.clone()).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let c = r.json();
        assert_eq!(c["origin"], "managed");
        assert_eq!(c["mode"], "from-start");
        assert_eq!(c["playlist"][1]["name"], "second.mp3");
        assert_eq!(c["announcements"]["clips"][0]["name"], "third.flac");
        assert_eq!(
            s.get("/api/channels/sales", &who).await.json()["shuffle"],
            true
        );

        // Each refusal with its status and reason.
        let unknown_track = serde_json::json!({"name": "x", "playlist": ["000000000000"]});
        let bad_zone = serde_json::json!({"name": "x", "schedule": {"timezone": "Nowhere", "default": "main"}});
        let bad_mode = serde_json::json!({"name": "x", "mode": "loud"});
        let cases: Vec<(&str, &str, Option<serde_json::Value>, u16, &str)> = vec![
            ("POST", "/api/channels", Some(body.clone()), 409, "exists"),
            (
                "POST",
                "/api/channels",
                Some(unknown_track),
                422,
                "unknown track id",
            ),
            ("POST", "/api/channels", Some(bad_zone), 422, "time zone"),
            (
                "POST",
                "/api/channels",
                Some(bad_mode),
                422,
                "unknown variant",
            ),
            (
                "POST",
                "/api/channels",
                Some(serde_json::json!({"nom": "x"})),
                422,
                "unknown field",
            ),
            (
                "PUT",
                "/api/channels/default",
                Some(serde_json::json!({})),
                403,
                "config file",
            ),
            (
                "PUT",
                "/api/channels/nothing",
                Some(serde_json::json!({})),
                404,
                "no channel",
            ),
            ("DELETE", "/api/channels/default", None, 403, "config file"),
            ("DELETE", "/api/channels/nothing", None, 404, "no channel"),
            ("GET", "/api/channels/nothing", None, 404, "no channel"),
            (
                "PUT",
                "/api/channels/sales/playlist",
                Some(serde_json::json!({"tracks": ["nope"]})),
                422,
                "unknown track id",
            ),
            (
                "POST",
                "/api/channels/default/rename",
                Some(serde_json::json!({"name": "y"})),
                403,
                "config file",
            ),
            (
                "PUT",
                "/api/routes",
                Some(serde_json::json!([{"user": "1", "channel": "nothing"}])),
                422,
                "does not exist",
            ),
        ];
        for (method, path, body, status, words) in cases {
            let r = match body {
                Some(b) => s.send(method, path, &who, b).await,
                None => s.request(method, path, &who, None, b"").await,
            };
            assert_eq!(r.status, status, "{method} {path}: {}", r.text());
            assert!(r.error().contains(words), "{method} {path}: {}", r.error());
        }
        let r = s
            .request(
                "POST",
                "/api/channels",
                &who,
                Some("application/json"),
                b"{not json",
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text());

        // Playlist, route, rename (the route follows), then delete: refused while routed.
        let r = s
            .send(
                "PUT",
                "/api/channels/sales/playlist",
                &who,
                serde_json::json!({"tracks": [ids[2], ids[0]]}),
            )
            .await;
        assert_eq!(r.json()["playlist"][0]["name"], "third.flac");
        let routes = serde_json::json!([{"user": "7001", "channel": "sales"}]);
        let r = s.send("PUT", "/api/routes", &who, routes.clone()).await;
        assert_eq!(r.json(), routes, "{}", r.text());
        assert_eq!(s.get("/api/routes", &who).await.json(), routes);
        let r = s
            .post(
                "/api/channels/sales/rename",
                &who,
                serde_json::json!({"name": "support"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            s.get("/api/routes", &who).await.json()[0]["channel"],
            "support"
        );
        let dialplan = s.get("/api/dialplan", &who).await.json();
        assert_eq!(dialplan["routes"][1]["channel"], "support");
        let r = s.delete("/api/channels/support", &who).await;
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(r.json()["routes"], serde_json::json!(["user = \"7001\""]));
        assert!(r.error().contains("remove_routes=true"), "{}", r.error());
        let r = s
            .delete("/api/channels/support?remove_routes=true", &who)
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(
            s.get("/api/routes", &who).await.json(),
            serde_json::json!([])
        );
        assert_eq!(
            s.get("/api/channels", &who)
                .await
                .json()
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // A session needs its CSRF token to change channels, as everywhere.
        let (mut session, _) = login(&s).await;
        session.csrf = None;
        let r = s
            .post("/api/channels", &session, serde_json::json!({"name": "z"}))
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
    }

    #[tokio::test]
    async fn metrics_are_public_only_when_configured() {
        let s = start(PLAIN).await;
        assert_eq!(s.get("/metrics", &nobody()).await.status, 401);
        let r = s.get("/metrics", &bearer(&s.token)).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        assert!(r.text().contains("mohd_up 1"));
        let p = start(Options {
            metrics_public: true,
            ..PLAIN
        })
        .await;
        let r = p.get("/metrics", &nobody()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("mohd_up 1"));
        assert_eq!(p.get("/api/status", &nobody()).await.status, 401);
    }

    #[tokio::test]
    async fn healthz_is_503_with_reasons_when_nothing_plays() {
        let s = start(PLAIN).await;
        let r = s.get("/healthz", &nobody()).await;
        assert_eq!(
            r.json(),
            serde_json::json!({"healthy": true, "reasons": []})
        );
        for t in s.fake.tracks() {
            s.fake.set_enabled(&t.id, false).unwrap();
        }
        let r = s.get("/healthz", &nobody()).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["reasons"][0], "channel default: no playable music");
    }

    /// A self-signed certificate for `localhost` and its key, written as PEM files in `dir`.
    fn self_signed(dir: &std::path::Path) -> (rcgen::CertifiedKey<rcgen::KeyPair>, Options) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let tls = Options {
            tls: Some((cert, key)),
            ..PLAIN
        };
        (ck, tls)
    }

    /// One request over TLS to `localhost` at `addr`, trusting only `ca`: a GET when `body` is
    /// null, else a JSON POST.
    async fn tls_exchange(
        ca: &rcgen::CertifiedKey<rcgen::KeyPair>,
        addr: SocketAddr,
        path: &str,
        body: serde_json::Value,
    ) -> Resp {
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        if body.is_null() {
            return exchange(stream, head("GET", path, &nobody(), &[]) + "\r\n", b"").await;
        }
        let b = body.to_string();
        let len = b.len().to_string();
        let extra = [
            ("Content-Type", "application/json"),
            ("Content-Length", &len),
        ];
        let h = head("POST", path, &nobody(), &extra) + "\r\n";
        exchange(stream, h, b.as_bytes()).await
    }

    #[tokio::test]
    async fn https_serves_with_the_configured_certificate_and_secure_cookies() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, tls) = self_signed(dir.path());
        let s = start(tls).await;
        assert!(s.handle.https);
        let r = tls_exchange(&ca, s.addr, "/healthz", serde_json::Value::Null).await;
        assert_eq!(r.status, 200);
        let login = serde_json::json!({"password": PASSWORD});
        let r = tls_exchange(&ca, s.addr, "/api/login", login).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("set-cookie").unwrap().contains("; Secure"));
        // Plain HTTP on the HTTPS port gets nothing useful.
        let mut plain = TcpStream::connect(s.addr).await.unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let _ = plain.read_to_end(&mut raw).await;
        assert!(!raw.starts_with(b"HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_tls_key_that_is_not_pem_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (_, tls) = self_signed(dir.path());
        let key = tls.tls.clone().unwrap().1;
        std::fs::write(&key, "not a key").unwrap();
        let (_tx, rx) = watch::channel(false);
        let e = serve(
            web_config("127.0.0.1:0".parse().unwrap(), &tls),
            Arc::new(FakeBackend::new()),
            AuthStore::open(dir.path()).unwrap(),
            rx,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, WebError::TlsFile { what: "key", .. }), "{e}");
        assert!(e.to_string().contains(&key.display().to_string()), "{e}");
    }

    #[tokio::test]
    async fn a_taken_port_is_an_error_and_shutdown_stops_the_listener() {
        let s = start(PLAIN).await;
        let (_tx, rx) = watch::channel(false);
        let e = serve(
            web_config(s.addr, &PLAIN),
            Arc::new(FakeBackend::new()),
            AuthStore::open(s.dir.path()).unwrap(),
            rx,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, WebError::Bind { .. }), "{e}");
        assert!(e.to_string().contains(&s.addr.to_string()));

        let addr = s.addr;
        s.stop.send(true).unwrap();
        s.handle.stopped().await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still listening after shutdown"
        );
    }
}
