//! `terra-sink erase` against moto: what the compiled `sqs-handler` archived
//! (in a versioned bucket) and projected, erased for two ids of one person
//! by the compiled command, without touching anyone else's.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use terra_sink_dev::bed::{Bed, assert_all_succeeded, sqs_record};
use terra_sink_dev::fault_proxy::{FaultProxy, FaultSchedule};
use terra_sink_dev::local_stack::LocalStack;
use terra_sink_dev::moto::{ERASURE_INDEX_FOLDER, Moto};
use terra_sink_dev::payload_server::{Behaviour, PayloadServer};
use terra_sink_dev::runtime_api::{HandlerProcess, RuntimeApi};
use terra_sink_dev::{fixture, now_ms, workspace_binary};

const OPERATOR_TOOL: &str = env!("CARGO_BIN_EXE_terra-sink");
const TABLE: &str = "terra-erased";
/// One person, before and after a user_reauth.
const OLD_ID: &str = "40f7b0e1-89e2-43ac-a5b8-1e29c8d47cad";
const NEW_ID: &str = "9c8b7a65-4321-4fed-a0b9-87c6d5e4f321";
/// Someone else.
const OTHER_ID: &str = "0b1c2d3e-4f50-4617-a8b9-cadbecfd0e1f";

/// Terra's daily example for `user` on day `day` after 2026-01-01.
fn daily(user: &str, day: u32) -> Vec<u8> {
    let date = time::macros::date!(2026 - 01 - 01) + time::Duration::days(i64::from(day));
    let mut payload: Value = serde_json::from_slice(&fixture("openapi_daily.json")).expect("JSON");
    payload["user"]["user_id"] = json!(user);
    payload["data"][0]["metadata"]["start_time"] = json!(format!("{date}T00:00:00.000000+00:00"));
    serde_json::to_vec(&payload).expect("JSON")
}

/// Terra's `deauth` or `access_revoked` example for `user`.
fn leaving(event_type: &str, user: &str) -> Vec<u8> {
    let mut payload: Value =
        serde_json::from_slice(&fixture(&format!("openapi_{event_type}.json"))).expect("JSON");
    payload["user"]["user_id"] = json!(user);
    serde_json::to_vec(&payload).expect("JSON")
}

/// Sends each (reference, body) through the handler into both stores, at
/// `sent`; the same references sent again later make new versions.
async fn archive(bed: &Bed, payloads: &[(String, Vec<u8>)], sent: u64) {
    archive_erasing_on_deauth(bed, payloads, sent, false).await;
}

/// As [`archive`], with `TERRA_ERASE_ON_DEAUTH` as given.
async fn archive_erasing_on_deauth(
    bed: &Bed,
    payloads: &[(String, Vec<u8>)],
    sent: u64,
    erase_on_deauth: bool,
) {
    let records: Vec<Value> = payloads
        .iter()
        .map(|(reference, body)| {
            let url = bed.payloads.route(
                &format!("/p/{reference}-{sent}.json"),
                Behaviour::Ok(body.clone()),
            );
            let message = json!({
                "type": "s3_payload", "url": url, "expires_in": 600,
                "payload_reference": reference,
            });
            sqs_record(reference, &message.to_string(), sent)
        })
        .collect();
    bed.run_to_success(
        &workspace_binary("sqs-handler"),
        &[
            ("TERRA_DYNAMODB_TABLE", TABLE),
            (
                "TERRA_ERASE_ON_DEAUTH",
                if erase_on_deauth { "true" } else { "false" },
            ),
        ],
        records,
        Duration::from_secs(120),
    )
    .await;
}

async fn versioned_bed(bucket: &str) -> Bed {
    let bed = Bed::start(bucket).await;
    bed.moto
        .s3()
        .put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .expect("versioning on");
    bed.moto.create_table(TABLE).await;
    bed
}

/// `terra-sink erase` as an operator runs it.
fn erase(bed: &Bed, users: &[&str]) -> Command {
    let mut args = vec!["erase"];
    args.extend(users.iter().flat_map(|u| ["--user", u]));
    operator(bed, &args)
}

/// The operator's tool with `args`, as an operator runs it.
fn operator(bed: &Bed, args: &[&str]) -> Command {
    let mut command = bed.operator_command(OPERATOR_TOOL, TABLE);
    command.args(args);
    command
}

fn succeeded(mut command: Command) -> Value {
    let output: Output = command.output().expect("erase runs");
    let summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "a JSON summary ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(output.status.success(), "{summary}");
    summary
}

/// Every version and delete marker in the bucket: (key, version id).
async fn versions(bed: &Bed) -> BTreeSet<(String, String)> {
    let listed = bed
        .moto
        .s3()
        .list_object_versions()
        .bucket(&bed.bucket)
        .send()
        .await
        .expect("versions listed");
    assert_ne!(listed.is_truncated(), Some(true), "one page in these tests");
    let of = |key: Option<&str>, version: Option<&str>| {
        (
            key.unwrap_or_default().to_owned(),
            version.unwrap_or_default().to_owned(),
        )
    };
    listed
        .versions()
        .iter()
        .map(|v| of(v.key(), v.version_id()))
        .chain(
            listed
                .delete_markers()
                .iter()
                .map(|m| of(m.key(), m.version_id())),
        )
        .collect()
}

/// Each listing was of one user's index (ListObjectsV2 under
/// `terra/_erasure/user=`), or of one object's versions (ListObjectVersions
/// with a whole key as the prefix): nothing listed a day or the archive.
/// `objects` objects had their versions listed.
fn assert_only_the_users_share_was_listed(listings: &[String], objects: usize) {
    let prefix_of = |listing: &str| {
        let query = listing.split_once('?').map_or("", |(_, q)| q);
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "prefix")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    };
    let mut versions_listed = BTreeSet::new();
    for listing in listings {
        let prefix = prefix_of(listing);
        if listing.contains("list-type=2") {
            assert!(
                prefix.starts_with("terra/_erasure/user=") && prefix.ends_with('/'),
                "a listing of more than one user's index: {listing}"
            );
        } else {
            assert!(
                prefix.starts_with("terra/dt=") && prefix.ends_with(".json")
                    || prefix.starts_with("terra/_erasure/user=") && prefix.ends_with(".json"),
                "a versions listing of more than one object: {listing}"
            );
            versions_listed.insert(prefix);
        }
    }
    let objects_listed = versions_listed
        .iter()
        .filter(|p| !p.contains(ERASURE_INDEX_FOLDER))
        .count();
    assert_eq!(objects_listed, objects, "{listings:#?}");
}

/// The users whose items the table holds.
async fn users_in_table(bed: &Bed) -> BTreeSet<String> {
    bed.moto
        .items(TABLE)
        .await
        .keys()
        .map(|(pk, _)| pk.clone())
        .collect()
}

#[test]
fn the_command_and_the_library_name_the_same_index() {
    assert_eq!(ERASURE_INDEX_FOLDER, terra_sink::erasure::INDEX_FOLDER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_one_person_removes_every_version_and_item_of_both_ids_and_nothing_else() {
    let bed = versioned_bed("terra-erase").await;
    let payloads: Vec<(String, Vec<u8>)> = [(OLD_ID, 0), (OLD_ID, 1), (NEW_ID, 2), (OTHER_ID, 0)]
        .iter()
        .map(|(user, day)| (format!("{}-{day}", &user[..8]), daily(user, *day)))
        .collect();
    let first = now_ms() - 60_000;
    archive(&bed, &payloads, first).await;
    archive(&bed, &payloads, first + 1000).await;
    let before = versions(&bed).await;
    let archived_before = bed.moto.objects(&bed.bucket).await.len();
    assert_eq!(archived_before, 4);
    // The index lists every object under its user (by hash).
    assert_eq!(bed.moto.index_markers(&bed.bucket).await.len(), 4);

    // Through a proxy that records every listing: none lists the archive.
    let proxy = FaultProxy::start(&bed.moto.endpoint, FaultSchedule::none()).await;
    let mut through_proxy = erase(&bed, &[OLD_ID, NEW_ID]);
    through_proxy.env("AWS_ENDPOINT_URL", &proxy.endpoint);
    let erased = succeeded(through_proxy);
    assert_only_the_users_share_was_listed(&proxy.s3_listings(), 3);
    assert_eq!(erased["users"], 2, "{erased}");
    assert_eq!(erased["objects"], 3, "{erased}");
    // Two sends of each object, two versions each.
    assert_eq!(erased["versions"], 6, "{erased}");
    assert_eq!(erased["items"], 3, "{erased}");
    assert_eq!(erased["failures"], json!([]), "{erased}");

    let after = versions(&bed).await;
    let gone: BTreeSet<_> = before.difference(&after).cloned().collect();
    assert!(
        gone.iter().all(|(key, _)| !key.contains(&OTHER_ID[..8])),
        "nothing of the other user's went: {gone:?}"
    );
    let left = bed.moto.objects(&bed.bucket).await;
    assert_eq!(
        left.len(),
        1,
        "{:?}",
        left.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
    assert_eq!(
        after
            .iter()
            .filter(|(key, _)| !key.contains(ERASURE_INDEX_FOLDER))
            .count(),
        2,
        "the other user's object keeps both its versions: {after:?}"
    );
    assert_eq!(bed.moto.index_markers(&bed.bucket).await.len(), 1);
    assert_eq!(
        users_in_table(&bed).await,
        BTreeSet::from([format!("USER#{OTHER_ID}")])
    );

    // Idempotent: nothing is left to erase.
    let again = succeeded(erase(&bed, &[OLD_ID, NEW_ID]));
    assert_eq!(
        (&again["objects"], &again["versions"], &again["items"]),
        (&json!(0), &json!(0), &json!(0)),
        "{again}"
    );

    // A late send from Terra for the erased user is written, and is then
    // all there is of them.
    archive(&bed, &[("late".into(), daily(OLD_ID, 9))], now_ms()).await;
    assert_eq!(bed.moto.objects(&bed.bucket).await.len(), 2);
    assert_eq!(
        users_in_table(&bed).await,
        BTreeSet::from([format!("USER#{OTHER_ID}"), format!("USER#{OLD_ID}")])
    );
    let late = succeeded(erase(&bed, &[OLD_ID]));
    assert_eq!(
        (&late["objects"], &late["items"]),
        (&json!(1), &json!(1)),
        "{late}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_erasure_is_finished_by_the_next_run() {
    let bed = versioned_bed("terra-erase-killed").await;
    let payloads: Vec<(String, Vec<u8>)> = (0..40)
        .map(|day| (format!("old-{day}"), daily(OLD_ID, day)))
        .chain([("other".to_owned(), daily(OTHER_ID, 0))])
        .collect();
    archive(&bed, &payloads, now_ms() - 60_000).await;
    let markers = bed.moto.index_markers(&bed.bucket).await.len();
    assert_eq!(markers, 41);

    // Killed (SIGKILL) once it has finished some objects, not all.
    let mut first = erase(&bed, &[OLD_ID]).spawn().expect("erase starts");
    let started = Instant::now();
    loop {
        let left = bed.moto.index_markers(&bed.bucket).await.len();
        if left < markers {
            break;
        }
        assert!(
            first.try_wait().expect("waitable").is_none(),
            "erase finished before it could be stopped; archive more objects"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().expect("killed");
    first.wait().expect("reaped");
    // Counted from the listing, not read back: a delete the killed run had
    // already sent may still land in moto between a listing and a read.
    let (after_kill, _) = bed.moto.count_keys(&bed.bucket).await;
    assert!(
        after_kill > 1,
        "the kill came before the end: {after_kill} objects left"
    );

    let resumed = succeeded(erase(&bed, &[OLD_ID]));
    assert_eq!(resumed["failures"], json!([]), "{resumed}");
    let left = bed.moto.objects(&bed.bucket).await;
    assert_eq!(
        left.iter()
            .map(|o| o.key.contains("other"))
            .collect::<Vec<_>>(),
        vec![true],
        "only the other user's object is left"
    );
    assert_eq!(bed.moto.index_markers(&bed.bucket).await.len(), 1);
    assert_eq!(
        users_in_table(&bed).await,
        BTreeSet::from([format!("USER#{OTHER_ID}")])
    );
}

/// The table's sort keys under `user`'s partition.
async fn items_of(bed: &Bed, user: &str) -> BTreeSet<String> {
    bed.moto
        .items(TABLE)
        .await
        .keys()
        .filter(|(pk, _)| *pk == format!("USER#{user}"))
        .map(|(_, sk)| sk.clone())
        .collect()
}

/// The archived objects' keys whose payload names `user`.
async fn objects_of(bed: &Bed, user: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for object in bed.moto.objects(&bed.bucket).await {
        let payload: Value = serde_json::from_slice(&object.body).expect("JSON archived");
        if payload["user"]["user_id"] == user {
            keys.insert(object.key);
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_on_deauth_erases_on_deauth_and_not_on_other_events() {
    let bed = versioned_bed("terra-erase-on-deauth").await;
    let first = now_ms() - 60_000;
    let days: Vec<(String, Vec<u8>)> = [(OLD_ID, 0), (OLD_ID, 1), (OTHER_ID, 0)]
        .iter()
        .map(|(user, day)| (format!("{}-{day}", &user[..8]), daily(user, *day)))
        .collect();
    archive_erasing_on_deauth(&bed, &days, first, true).await;
    archive_erasing_on_deauth(&bed, &days, first + 1000, true).await;
    assert_eq!(
        objects_of(&bed, OLD_ID).await.len(),
        2,
        "dailies erase no one"
    );
    assert_eq!(objects_of(&bed, OTHER_ID).await.len(), 1);

    // OLD_ID leaves: the rest of them is erased, every version, and the
    // deauth stays, archived and projected, as the record of it.
    let bye = [("bye".to_owned(), leaving("deauth", OLD_ID))];
    let before = versions(&bed).await;
    let others_items = items_of(&bed, OTHER_ID).await;
    assert!(!others_items.is_empty());
    archive_erasing_on_deauth(&bed, &bye, now_ms(), true).await;
    let left = objects_of(&bed, OLD_ID).await;
    assert_eq!(left.len(), 1, "{left:?}");
    let after = versions(&bed).await;
    for (key, _) in before.iter().filter(|(key, _)| key.contains(&OLD_ID[..8])) {
        assert!(
            after.iter().all(|(k, _)| k != key),
            "every version of {key} is gone: {after:?}"
        );
    }
    let kept = items_of(&bed, OLD_ID).await;
    assert!(
        kept.iter()
            .all(|sk| sk == "PROFILE" || sk.ends_with("#DEAUTH")),
        "{kept:?}"
    );
    assert!(kept.iter().any(|sk| sk.ends_with("#DEAUTH")), "{kept:?}");
    assert_eq!(
        objects_of(&bed, OTHER_ID).await.len(),
        1,
        "others untouched"
    );
    assert_eq!(items_of(&bed, OTHER_ID).await, others_items);

    // Off, a leaving event erases nothing.
    let revoked = [("revoked".to_owned(), leaving("access_revoked", OTHER_ID))];
    archive_erasing_on_deauth(&bed, &revoked, now_ms(), false).await;
    assert_eq!(objects_of(&bed, OTHER_ID).await.len(), 2);

    // On, access_revoked erases as deauth does.
    let revoked_again = [(
        "revoked-again".to_owned(),
        leaving("access_revoked", OTHER_ID),
    )];
    archive_erasing_on_deauth(&bed, &revoked_again, now_ms(), true).await;
    assert_eq!(objects_of(&bed, OTHER_ID).await.len(), 1);
    assert!(
        items_of(&bed, OTHER_ID)
            .await
            .iter()
            .all(|sk| sk == "PROFILE" || sk.ends_with("#ACCESS_REVOKED")),
    );
    // What the handler erased the command finds nothing more of, but the
    // record it kept.
    let erased = succeeded(erase(&bed, &[OLD_ID]));
    assert_eq!(
        (&erased["objects"], &erased["failures"]),
        (&json!(1), &json!([])),
        "{erased}"
    );
}

/// The stack `template.yaml` creates with `EraseOnDeauth=true`, deployed into
/// moto with IAM enforced: its function's role may do what erasing on a
/// deauth takes (every version, every item), and the compiled handler does
/// it with the role's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stacks_role_erases_on_deauth_with_iam_enforced() {
    let mut moto = Moto::start().await;
    let stack = LocalStack::deploy_for(
        &mut moto,
        "SqsHandlerFunction",
        &[("Settings", "EraseOnDeauth=true")],
    )
    .await;
    assert_eq!(stack.variable("TERRA_ERASE_ON_DEAUTH"), Some("true"));
    let bucket = stack.outputs["BucketName"].clone();
    let table = stack.outputs["TableName"].clone();
    let payloads = PayloadServer::start().await;
    let runtime = RuntimeApi::start().await;
    let handler = HandlerProcess::spawn(
        &workspace_binary("sqs-handler"),
        &stack.handler_environment(runtime.addr, &moto.endpoint),
    );
    let queue = stack.queue.clone().expect("the stack's queue");
    let queue_arn = format!(
        "arn:aws:sqs:us-east-1:123456789012:{}",
        queue.url.rsplit('/').next().expect("a queue name")
    );
    let send = |reference: &str, body: Vec<u8>, sent: u64| {
        let url = payloads.route(&format!("/p/{reference}-{sent}.json"), Behaviour::Ok(body));
        let message = json!({"type": "s3_payload", "url": url, "expires_in": 600});
        let mut record = sqs_record(reference, &message.to_string(), sent);
        record["eventSourceARN"] = json!(queue_arn);
        json!({ "Records": [record] })
    };
    let first = now_ms() - 60_000;
    // Two days, then the deauth.
    for event in [
        send("daily", daily(OLD_ID, 0), first),
        send("daily", daily(OLD_ID, 1), first + 1000),
        send("bye", leaving("deauth", OLD_ID), now_ms()),
    ] {
        let result = runtime.invoke(&event, Duration::from_secs(60)).await;
        assert_all_succeeded(&result, &handler);
    }

    let listed = moto
        .s3()
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .expect("versions listed");
    let keys: BTreeSet<&str> = listed.versions().iter().filter_map(|v| v.key()).collect();
    assert_eq!(
        keys.iter()
            .filter(|k| !k.contains(ERASURE_INDEX_FOLDER))
            .count(),
        1,
        "the deauth alone is left: {keys:?}"
    );
    let items = moto.items(&table).await;
    assert!(
        items
            .keys()
            .all(|(_, sk)| sk == "PROFILE" || sk.ends_with("#DEAUTH")),
        "{items:?}"
    );
    assert!(
        !handler.output().contains("AccessDenied"),
        "{}",
        handler.output()
    );
}

/// An archive written before the handlers kept the erasure index: `replay
/// archive --erasure-index` lists its objects once, and `erase` then finds
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_from_before_the_index_is_indexed_by_a_replay() {
    let bed = versioned_bed("terra-erase-backfill").await;
    let sent = now_ms() - 60_000;
    let payloads: Vec<(String, Vec<u8>)> = [(OLD_ID, 0), (OLD_ID, 1), (OTHER_ID, 0)]
        .iter()
        .map(|(user, day)| (format!("{}-{day}", &user[..8]), daily(user, *day)))
        .collect();
    archive(&bed, &payloads, sent).await;
    for marker in bed.moto.index_markers(&bed.bucket).await {
        bed.moto
            .s3()
            .delete_object()
            .bucket(&bed.bucket)
            .key(&marker)
            .send()
            .await
            .expect("marker removed");
    }
    let nothing = succeeded(erase(&bed, &[OLD_ID]));
    assert_eq!(nothing["objects"], 0, "no index, nothing found: {nothing}");

    let day = |ms: u64| {
        time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
            .expect("a time")
            .date()
    };
    let state = std::env::temp_dir().join(format!("erasure-index-{}.json", std::process::id()));
    let (from, to) = (
        (day(sent) - time::Duration::days(1)).to_string(),
        (day(now_ms()) + time::Duration::days(1)).to_string(),
    );
    let mut replay = operator(
        &bed,
        &[
            "replay",
            "archive",
            "--from",
            &from,
            "--to",
            &to,
            "--erasure-index",
        ],
    );
    replay
        .arg("--state")
        .arg(&state)
        .env_remove("TERRA_DYNAMODB_TABLE");
    let indexed = succeeded(replay);
    assert_eq!(indexed["items_written"], 3, "{indexed}");
    assert_eq!(bed.moto.index_markers(&bed.bucket).await.len(), 3);

    let erased = succeeded(erase(&bed, &[OLD_ID]));
    assert_eq!(erased["objects"], 2, "{erased}");
    assert_eq!(objects_of(&bed, OLD_ID).await.len(), 0);
    assert_eq!(objects_of(&bed, OTHER_ID).await.len(), 1);
}
