//! Client deadlines answered the way gRPC says: a call whose `grpc-timeout`
//! passes before it is done ends with DEADLINE_EXCEEDED.
//!
//! tonic's server enforces the header too, outside every layer of ours, but
//! answers CANCELLED ("Timeout expired"); a client whose own timer has not
//! fired yet (critest's one-millisecond PullImage) then sees the wrong code.
//! This layer sits inside tonic's and ends the call a millisecond earlier
//! (tokio's timers tick in milliseconds, and tonic polls the call before its
//! own timer), so tonic's never fires first. Ending the call drops its future,
//! as tonic's timeout would: a pull nobody else waits for stops.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// How much earlier than the client's deadline the call is ended.
const MARGIN: Duration = Duration::from_millis(1);

/// The layer for `tonic::transport::Server::builder().layer(...)`.
#[derive(Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_timeout);
        let call = self.inner.call(req);
        Box::pin(async move {
            let Some(t) = timeout else {
                return call.await;
            };
            match tokio::time::timeout(t.saturating_sub(MARGIN), call).await {
                Ok(r) => r,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the client's deadline ({t:?}) passed before the call was done"
                ))
                .into_http()),
            }
        })
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
/// None for anything else (then no deadline is applied here).
pub fn parse_timeout(v: &str) -> Option<Duration> {
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn timeouts_parse_as_grpc_writes_them() {
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout("999m"), Some(Duration::from_millis(999)));
        assert_eq!(
            parse_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "1 S", "১S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    /// A call that takes `delay`, answering 200 with an empty body.
    fn slow(
        delay: Duration,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<String>,
        Error = std::convert::Infallible,
        Future = BoxFuture<Result<http::Response<String>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(move |_req: http::Request<()>| -> BoxFuture<_> {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(http::Response::new("done".to_string()))
            })
        })
    }

    fn request(timeout: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder();
        if let Some(t) = timeout {
            b = b.header("grpc-timeout", t);
        }
        b.body(()).expect("request")
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_ends_with_deadline_exceeded() {
        let svc = DeadlineLayer.layer(slow(Duration::from_secs(5)));
        let t = std::time::Instant::now();
        let resp = svc.oneshot(request(Some("50m"))).await.expect("answer");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        let status = tonic::Status::from_header_map(resp.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(resp.body().is_empty());
    }

    #[tokio::test]
    async fn calls_within_their_deadline_or_without_one_are_untouched() {
        for timeout in [None, Some("10S"), Some("bogus")] {
            let svc = DeadlineLayer.layer(slow(Duration::from_millis(20)));
            let resp = svc.oneshot(request(timeout)).await.expect("answer");
            assert_eq!(resp.body(), "done", "{timeout:?}");
            assert!(tonic::Status::from_header_map(resp.headers()).is_none());
        }
    }
}
