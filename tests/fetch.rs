//! The fetcher against a real HTTP server: retries, limits, timeouts and the
//! URL policy on redirects and DNS.

mod support;

use std::time::Duration;

use support::payload_server::{Behaviour, PayloadServer, assert_no_secrets};
use terra_sink::budget::{HoldingCost, MemoryBudget};
use terra_sink::fetch::{
    FetchDeadlines, FetchError, FetchSettings, Fetched, Fetcher, HostPattern, UrlPolicy,
};
use terra_sink::outcome::{Classify, FailureClass, Retry};
use tokio::time::Instant;
use url::Url;

const PAYLOAD: &[u8] = br#"{"type":"daily","user":{"user_id":"u"},"data":[]}"#;

fn fetcher(settings: FetchSettings) -> Fetcher {
    let policy = UrlPolicy {
        allowed_hosts: Some(vec![HostPattern::parse("127.0.0.1").expect("valid")]),
        allow_insecure: true,
    };
    Fetcher::new(policy, settings).expect("client builds")
}

fn quick() -> FetchSettings {
    FetchSettings {
        timeout: Duration::from_secs(2),
        max_attempts: Some(3),
        max_payload_bytes: 64 * 1024,
    }
}

fn within(secs: u64) -> FetchDeadlines {
    FetchDeadlines {
        url_expires_at: None,
        give_up_at: Instant::now() + Duration::from_secs(secs),
    }
}

/// Fetches with the quick settings and plenty of time.
async fn fetch(target: &str) -> Result<Fetched, FetchError> {
    fetcher(quick()).fetch(&url(target), within(30)).await
}

fn url(s: &str) -> Url {
    Url::parse(s).expect("valid URL")
}

#[tokio::test]
async fn retries_5xx_and_429_honouring_retry_after() {
    let server = PayloadServer::start().await;
    let flaky = server.route(
        "/flaky",
        Behaviour::FailThenOk {
            failures: 2,
            status: 500,
            retry_after: None,
            body: PAYLOAD.to_vec(),
        },
    );
    let fetched = fetch(&flaky).await.expect("third attempt succeeds");
    assert_eq!((&fetched.body[..], fetched.attempts), (PAYLOAD, 3));

    let throttled = server.route(
        "/throttled",
        Behaviour::FailThenOk {
            failures: 1,
            status: 429,
            retry_after: Some(1),
            body: PAYLOAD.to_vec(),
        },
    );
    let started = std::time::Instant::now();
    let fetched = fetch(&throttled).await.expect("second attempt succeeds");
    assert_eq!(fetched.attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 must be waited for"
    );
}

#[tokio::test]
async fn gives_up_after_max_attempts_as_transient() {
    let server = PayloadServer::start().await;
    let down = server.route("/down", Behaviour::Status(503));
    let error = fetch(&down).await.expect_err("always 503");
    assert!(
        matches!(
            error,
            FetchError::Status {
                status: 503,
                attempts: 3,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(
        (error.class(), error.retry()),
        (FailureClass::Fetch, Retry::Transient)
    );
    assert_eq!(server.hits("/down"), 3);
    assert_no_secrets(&error.to_string());
}

#[tokio::test]
async fn permanent_statuses_are_not_retried() {
    let server = PayloadServer::start().await;
    for (path, status, class) in [
        ("/forbidden", 403, FailureClass::Expired),
        ("/bad-request", 400, FailureClass::Expired),
        ("/missing", 404, FailureClass::Fetch),
        ("/gone", 410, FailureClass::Fetch),
    ] {
        let target = server.route(path, Behaviour::Status(status));
        let error = fetch(&target).await.expect_err("fails");
        assert_eq!(
            (error.class(), error.retry()),
            (class, Retry::Permanent),
            "{path}: {error}"
        );
        assert_eq!(server.hits(path), 1, "{path}");
        assert_no_secrets(&error.to_string());
    }
}

#[tokio::test]
async fn decodes_gzip_and_limits_the_decoded_size() {
    let server = PayloadServer::start().await;
    let small = server.route("/small.gz", Behaviour::Gzip(PAYLOAD.to_vec()));
    let fetched = fetch(&small).await.expect("decodes");
    assert_eq!(&fetched.body[..], PAYLOAD);

    // 10 MB of zeros compress to ~10 KB: the limit applies to what it inflates to.
    let bomb = server.route("/bomb.gz", Behaviour::Gzip(vec![b'0'; 10 * 1024 * 1024]));
    let error = fetch(&bomb).await.expect_err("too large");
    assert!(
        matches!(error, FetchError::TooLarge { limit: 65536, .. }),
        "{error}"
    );
    assert_eq!(error.retry(), Retry::Permanent);

    let declared = server.route("/declared", Behaviour::Ok(vec![b' '; 100 * 1024]));
    let error = fetch(&declared).await.expect_err("too large");
    assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");
    assert_eq!(server.hits("/declared"), 1);
}

#[tokio::test]
async fn slow_servers_time_out_and_deadlines_stop_retries() {
    let server = PayloadServer::start().await;
    let slow = server.route(
        "/slow",
        Behaviour::Delay(Duration::from_secs(5), PAYLOAD.into()),
    );
    let settings = FetchSettings {
        timeout: Duration::from_millis(300),
        max_attempts: Some(2),
        ..quick()
    };
    let error = fetcher(settings.clone())
        .fetch(&url(&slow), within(30))
        .await
        .expect_err("times out");
    assert!(
        matches!(error, FetchError::Timeout { attempts: 2, .. }),
        "{error}"
    );
    assert_eq!(error.retry(), Retry::Transient);

    let started = Instant::now();
    let error = fetcher(quick())
        .fetch(
            &url(&slow),
            FetchDeadlines {
                url_expires_at: None,
                give_up_at: started + Duration::from_millis(400),
            },
        )
        .await
        .expect_err("deadline");
    assert!(matches!(error, FetchError::Deadline { .. }), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "must stop at the deadline"
    );

    let error = fetcher(quick())
        .fetch(
            &url(&slow),
            FetchDeadlines {
                url_expires_at: Some(Instant::now() + Duration::from_millis(300)),
                give_up_at: Instant::now() + Duration::from_secs(30),
            },
        )
        .await
        .expect_err("URL expires first");
    assert_eq!(
        (error.class(), error.retry()),
        (FailureClass::Expired, Retry::Permanent),
        "{error}"
    );
}

/// Without an attempt limit a fetch retries for as long as a new request can
/// reach the host before the URL expires, and then says the URL expired.
#[tokio::test]
async fn retries_while_the_url_lives() {
    let server = PayloadServer::start().await;
    let outage = server.route(
        "/outage",
        Behaviour::FailThenOk {
            failures: 6,
            status: 500,
            retry_after: None,
            body: PAYLOAD.to_vec(),
        },
    );
    let unlimited = FetchSettings {
        max_attempts: None,
        ..quick()
    };
    let fetched = fetcher(unlimited.clone())
        .fetch(
            &url(&outage),
            FetchDeadlines {
                url_expires_at: Some(Instant::now() + Duration::from_secs(20)),
                give_up_at: Instant::now() + Duration::from_secs(25),
            },
        )
        .await
        .expect("served once the outage is over");
    assert_eq!(fetched.attempts, 7);

    let down = server.route("/down-for-good", Behaviour::Status(503));
    let started = Instant::now();
    let error = fetcher(unlimited)
        .fetch(
            &url(&down),
            FetchDeadlines {
                url_expires_at: Some(started + Duration::from_secs(3)),
                give_up_at: started + Duration::from_secs(25),
            },
        )
        .await
        .expect_err("the URL expires first");
    assert!(
        matches!(error, FetchError::ExpiredWhileFetching { .. }),
        "{error}"
    );
    assert!(server.hits("/down-for-good") >= 4, "kept trying");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stopped when the URL expired"
    );
}

/// S3 and GCS check a pre-signed URL when the request arrives: a download
/// that started in time is not cut at the URL's expiry.
#[tokio::test]
async fn a_download_under_way_when_the_url_expires_finishes() {
    let server = PayloadServer::start().await;
    let slow = server.route(
        "/slow-start",
        Behaviour::Delay(Duration::from_millis(800), PAYLOAD.into()),
    );
    let fetched = fetcher(quick())
        .fetch(
            &url(&slow),
            FetchDeadlines {
                url_expires_at: Some(Instant::now() + Duration::from_millis(200)),
                give_up_at: Instant::now() + Duration::from_secs(30),
            },
        )
        .await
        .expect("started in time, so it finishes");
    assert_eq!((fetched.attempts, &fetched.body[..]), (1, PAYLOAD));
}

#[tokio::test]
async fn redirects_must_pass_the_policy() {
    let server = PayloadServer::start().await;
    let target = server.route("/target", Behaviour::Ok(PAYLOAD.to_vec()));
    let hop = server.route("/hop", Behaviour::Redirect(target));
    let fetched = fetch(&hop).await.expect("allowed redirect");
    assert_eq!(&fetched.body[..], PAYLOAD);

    let to_metadata = server.route(
        "/to-metadata",
        Behaviour::Redirect("http://169.254.169.254/latest/meta-data/".into()),
    );
    let error = fetch(&to_metadata).await.expect_err("refused");
    assert_eq!(
        (error.class(), error.retry()),
        (FailureClass::Refused, Retry::Permanent),
        "{error}"
    );

    let looping = server.route(
        "/loop",
        Behaviour::Redirect(format!("http://{}/loop", server.addr)),
    );
    let error = fetch(&looping).await.expect_err("loop");
    assert!(
        matches!(error, FetchError::TooManyRedirects { .. }),
        "{error}"
    );
    assert_no_secrets(&error.to_string());
}

#[tokio::test]
async fn strict_policy_refuses_local_targets_before_connecting() {
    let server = PayloadServer::start().await;
    server.route("/p", Behaviour::Ok(PAYLOAD.to_vec()));
    let strict = Fetcher::new(UrlPolicy::default(), quick()).expect("client builds");
    let target = url(&format!(
        "https://localhost:{}/p?X-Amz-Signature=abc",
        server.addr.port()
    ));
    let error = strict
        .fetch(&target, within(30))
        .await
        .expect_err("refused");
    assert_eq!(
        (error.class(), error.retry()),
        (FailureClass::Refused, Retry::Permanent),
        "{error}"
    );
    assert_eq!(server.hits("/p"), 0);
    assert_no_secrets(&error.to_string());

    let literal = url(&format!("https://127.0.0.1:{}/p", server.addr.port()));
    let error = strict
        .fetch(&literal, within(30))
        .await
        .expect_err("refused literal");
    assert_eq!(error.class(), FailureClass::Refused, "{error}");
}

/// A hostile or broken payload server: every response ends in a classified
/// failure, within the per-attempt timeout and the attempt limit, holding at
/// most the payload limit.
#[tokio::test]
async fn hostile_bodies_end_in_bounded_classified_failures() {
    let server = PayloadServer::start().await;
    let settings = FetchSettings {
        timeout: Duration::from_millis(500),
        max_attempts: Some(2),
        ..quick()
    };
    let cases = [
        (
            "/terabyte",
            Behaviour::DeclaredLength {
                declared: 1 << 40,
                body: PAYLOAD.to_vec(),
            },
            FailureClass::Fetch,
            Retry::Permanent,
            1,
        ),
        (
            "/short",
            Behaviour::DeclaredLength {
                declared: 10_000,
                body: PAYLOAD.to_vec(),
            },
            FailureClass::Fetch,
            Retry::Transient,
            2,
        ),
        (
            "/reset",
            Behaviour::ResetMidBody(PAYLOAD.repeat(100)),
            FailureClass::Fetch,
            Retry::Transient,
            2,
        ),
        // A body that keeps coming is not stalled: the deadline ends it.
        (
            "/endless",
            Behaviour::Trickle(Duration::from_millis(50)),
            FailureClass::Deferred,
            Retry::Transient,
            1,
        ),
    ];
    for (path, behaviour, class, retry, hits) in cases {
        let target = server.route(path, behaviour);
        let started = Instant::now();
        let fetched = tokio::time::timeout(
            Duration::from_secs(20),
            fetcher(settings.clone()).fetch(&url(&target), within(3)),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: the fetch must end"));
        let error = fetched.expect_err(path);
        assert_eq!(
            (error.class(), error.retry()),
            (class, retry),
            "{path}: {error}"
        );
        assert_eq!(server.hits(path), hits, "{path}");
        assert_no_secrets(&error.to_string());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path}: bounded by the timeout, attempts and deadline"
        );
    }
}

/// A body is downloaded only once the budget has room for what it will hold;
/// the room comes back when the record lets go of the body, and a body of
/// unannounced length holds room for the largest payload until it is in.
#[tokio::test]
async fn downloads_wait_for_room_in_the_memory_budget() {
    const KIB: u64 = 1024;
    let server = PayloadServer::start().await;
    let mut large = PAYLOAD.to_vec();
    large.truncate(large.len() - 2);
    large.extend(format!(r#"{{"pad":"{}"}}]}}"#, "x".repeat(600 * 1024)).as_bytes());
    let announced = server.route("/announced", Behaviour::Ok(large.clone()));
    let unannounced = server.route("/unannounced", Behaviour::Chunked(large.clone()));
    let cost = HoldingCost {
        per_record: 0,
        ..HoldingCost::BUFFER_ONLY
    };
    let budget = MemoryBudget::new(1024 * KIB);
    let fetcher = fetcher(FetchSettings {
        max_payload_bytes: 900 * KIB,
        ..quick()
    })
    .with_budget(budget.clone(), cost);

    let first = fetcher
        .fetch(&url(&announced), within(5))
        .await
        .expect("room for one");
    assert_eq!(&first.body[..], &large[..]);
    assert_eq!(
        budget.available_bytes(),
        1024 * KIB - first.reservation.bytes()
    );
    let second = fetcher
        .fetch(&url(&announced), within(1))
        .await
        .expect_err("no room for a second while the first is held");
    assert_eq!(second.class(), FailureClass::Deferred, "{second}");
    drop(first);
    let second = fetcher
        .fetch(&url(&announced), within(5))
        .await
        .expect("room once the first is done");
    drop(second);

    let chunked = fetcher
        .fetch(&url(&unannounced), within(5))
        .await
        .expect("fits");
    assert_eq!(&chunked.body[..], &large[..]);
    assert!(
        chunked.reservation.bytes() <= 900 * KIB
            && chunked.reservation.bytes() >= large.len() as u64,
        "held {} for {} bytes",
        chunked.reservation.bytes(),
        large.len()
    );
    drop(chunked);
    assert_eq!(budget.available_bytes(), 1024 * KIB);
}

/// Streams share the bandwidth: past the streaming threshold, a body waits
/// for one of the few streams, whatever room the budget has, while smaller
/// bodies go on beside it.
#[tokio::test]
async fn large_bodies_stream_a_few_at_a_time() {
    const KIB: u64 = 1024;
    let server = PayloadServer::start().await;
    let mut large = PAYLOAD.to_vec();
    large.truncate(large.len() - 2);
    large.extend(format!(r#"{{"pad":"{}"}}]}}"#, "x".repeat(200 * 1024)).as_bytes());
    let large_route = server.route("/large", Behaviour::Ok(large));
    let small_route = server.route("/small", Behaviour::Ok(PAYLOAD.to_vec()));
    let fetcher = fetcher(FetchSettings {
        max_payload_bytes: 900 * KIB,
        ..quick()
    })
    .streaming_above(100 * KIB, 10 * KIB, 1);

    let streaming = fetcher
        .fetch(&url(&large_route), within(5))
        .await
        .expect("the one stream is free");
    let small = fetcher
        .fetch(&url(&small_route), within(5))
        .await
        .expect("a body under the threshold does not stream");
    drop(small);
    let second = fetcher
        .fetch(&url(&large_route), within(1))
        .await
        .expect_err("the one stream is taken");
    assert_eq!(second.class(), FailureClass::Deferred, "{second}");
    drop(streaming);
    fetcher
        .fetch(&url(&large_route), within(5))
        .await
        .expect("the stream is free once the first is done");
}
