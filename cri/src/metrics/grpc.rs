//! A tower layer on the gRPC server that counts every call by method and status code and
//! times it (containerd's and CRI-O's `grpc_server_handled_total`/`_handling_seconds`).
//!
//! The status of a call is where gRPC puts it: in the response headers for an error
//! answered at once ("trailers-only"), else in the trailers after the last message. So the
//! response body is wrapped and the call is recorded when the trailers go by; a body
//! dropped before them (the client went away mid-stream) is recorded as `Canceled`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::{Bytes, Service};
use tower::Layer;

use super::DaemonMetrics;

/// Adds [`GrpcMetrics`] around the server's routes.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<DaemonMetrics>);

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] makes.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<DaemonMetrics>,
}

impl<S, B> Service<Request<B>> for GrpcMetrics<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // `/runtime.v1.RuntimeService/RunPodSandbox` → `RunPodSandbox`.
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let call = Call {
            method,
            started: Instant::now(),
            metrics: self.metrics.clone(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut call = call;
            let resp = fut.await?;
            if let Some(code) = status_of(resp.headers()) {
                call.finish(code);
            }
            Ok(resp.map(|body| Body::new(Recorded { body, call })))
        })
    }
}

/// One call being timed; recorded once.
struct Call {
    method: String,
    started: Instant,
    metrics: Arc<DaemonMetrics>,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if !self.done {
            self.done = true;
            self.metrics
                .grpc_done(&self.method, code, self.started.elapsed());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

fn status_of(headers: &HeaderMap) -> Option<tonic::Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(v))
}

/// The response body, watched for the trailers that carry the status.
struct Recorded {
    body: Body,
    call: Call,
}

impl tonic::codegen::Body for Recorded {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(code) = f.trailers_ref().and_then(status_of) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(tonic::Code::Internal),
            // The end without trailers: a trailers-only answer, already recorded.
            Poll::Ready(None) => this.call.finish(tonic::Code::Ok),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
