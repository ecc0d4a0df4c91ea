//! The workflow driven from in-memory repositories: the order of its requests, its bounds
//! and how it goes on (or not) after a refused or missing file.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::*;
use crate::keys::PrivateKey;
use crate::metadata::{
    DelegatedRole, Delegations, Envelope, MetaFile, RoleKeys, Root, SPEC_VERSION, Snapshot, TargetFile,
    Targets, Timestamp, format_expires,
};

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

fn signed<T: Serialize>(m: &T, key: &PrivateKey) -> Vec<u8> {
    Envelope::sign(m, &[key]).unwrap().to_bytes().unwrap()
}

/// A repository in memory whose every role, delegated ones included, is signed by one key.
struct Repo {
    key: PrivateKey,
    files: BTreeMap<String, Vec<u8>>,
}

/// What a repository holds: root versions 1..=`roots` (the last one expired if
/// `root_expired`), and `delegations[i]` roles delegated by level `i` (level 0 is the
/// top-level targets; each level's first role delegates the next level).
struct Shape {
    roots: u64,
    root_expired: bool,
    delegations: Vec<usize>,
}

impl Default for Shape {
    fn default() -> Self {
        Shape { roots: 1, root_expired: false, delegations: Vec::new() }
    }
}

fn role_name(level: usize, i: usize) -> String {
    format!("d{level}-{i}")
}

impl Repo {
    fn new(shape: Shape) -> Repo {
        let key = PrivateKey::generate().unwrap();
        let mut files = BTreeMap::new();
        let valid = format_expires(now() + 30 * DAY);
        for version in 1..=shape.roots {
            let expires = if shape.root_expired && version == shape.roots {
                format_expires(now() - DAY)
            } else {
                valid.clone()
            };
            files.insert(format!("{version}.root.json"), signed(&root(&key, version, expires), &key));
        }
        // Targets roles, deepest level first so each parent can be written after its children.
        let mut meta = BTreeMap::new();
        for level in 0..=shape.delegations.len() {
            let children = shape.delegations.get(level).copied().unwrap_or(0);
            let delegations = (children > 0).then(|| delegations_of(&key, level, children));
            let owners: Vec<String> = if level == 0 {
                vec!["targets".into()]
            } else {
                (0..shape.delegations[level - 1]).map(|i| role_name(level - 1, i)).collect()
            };
            for (i, owner) in owners.iter().enumerate() {
                let name = format!("{owner}.bin");
                let t = Targets {
                    type_: "targets".into(),
                    spec_version: SPEC_VERSION.into(),
                    version: 1,
                    expires: valid.clone(),
                    targets: [(name, TargetFile::from_bytes(owner.as_bytes(), None))].into(),
                    // Only the first role of a level delegates further.
                    delegations: delegations.clone().filter(|_| i == 0),
                    unrecognized: Default::default(),
                };
                let bytes = signed(&t, &key);
                meta.insert(format!("{owner}.json"), MetaFile::describing(1, &bytes));
                files.insert(format!("1.{owner}.json"), bytes);
            }
        }
        let snapshot = Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: valid.clone(),
            meta,
            unrecognized: Default::default(),
        };
        let snapshot = signed(&snapshot, &key);
        let timestamp = Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: valid,
            meta: [("snapshot.json".to_string(), MetaFile::describing(1, &snapshot))].into(),
            unrecognized: Default::default(),
        };
        files.insert("timestamp.json".into(), signed(&timestamp, &key));
        files.insert("1.snapshot.json".into(), snapshot);
        Repo { key, files }
    }

    fn first_root(&self) -> &[u8] {
        &self.files["1.root.json"]
    }

    fn workflow(&self, limits: Limits) -> Workflow {
        Workflow::new(self.first_root(), LocalCopies::default(), now(), limits).unwrap()
    }

    /// Drives `wf` to its end, answering from the repository: the names requested, and
    /// the run's error if it stopped.
    fn drive(&self, wf: &mut Workflow) -> (Vec<String>, Option<Error>) {
        let mut asked = Vec::new();
        loop {
            let request = match wf.next_step() {
                Ok(Next::Fetch(r)) => r,
                Ok(Next::Refused { role, .. }) => {
                    asked.push(format!("refused {role}"));
                    continue;
                }
                Ok(Next::Done) => return (asked, None),
                Err(e) => return (asked, Some(e)),
            };
            asked.push(request.name.clone());
            match self.files.get(&request.name) {
                Some(bytes) => {
                    if let Err(e) = wf.feed(bytes)
                        && !matches!(request.file, File::Root { .. } | File::Delegated { .. })
                    {
                        return (asked, Some(e));
                    }
                }
                None => wf.not_found(),
            }
        }
    }
}

fn root(key: &PrivateKey, version: u64, expires: String) -> Root {
    let role = || RoleKeys { keyids: vec![key.key_id()], threshold: 1, unrecognized: Default::default() };
    Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires,
        consistent_snapshot: true,
        keys: [(key.key_id(), key.public())].into(),
        roles: ["root", "timestamp", "snapshot", "targets"].map(|r| (r.to_string(), role())).into(),
        unrecognized: Default::default(),
    }
}

/// `count` roles of level `level + 1`, each trusted for every path.
fn delegations_of(key: &PrivateKey, level: usize, count: usize) -> Delegations {
    Delegations {
        keys: [(key.key_id(), key.public())].into(),
        roles: (0..count)
            .map(|i| DelegatedRole {
                name: role_name(level, i),
                keyids: vec![key.key_id()],
                threshold: 1,
                terminating: false,
                paths: Some(vec!["*".into()]),
                path_hash_prefixes: None,
                unrecognized: Default::default(),
            })
            .collect(),
        unrecognized: Default::default(),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn requests_follow_the_specification_order() {
    let repo = Repo::new(Shape { roots: 3, delegations: vec![2, 1], ..Shape::default() });
    let mut wf = repo.workflow(Limits::default());
    let (asked, error) = repo.drive(&mut wf);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        asked,
        names(&[
            "2.root.json",
            "3.root.json",
            "4.root.json",
            "timestamp.json",
            "1.snapshot.json",
            "1.targets.json",
            "1.d0-0.json",
            "1.d0-1.json",
            "1.d1-0.json",
        ])
    );
    assert_eq!(wf.trusted().root().version, 3);
    assert!(wf.root_rotated() && wf.first_root_version() == 1);
    assert!(wf.timestamp_changed());
    assert!(wf.notes().is_empty(), "{:?}", wf.notes());
    let found: Vec<String> = wf.trusted().targets_matching("").into_iter().map(|(n, _)| n).collect();
    assert_eq!(found, names(&["d0-0.bin", "d0-1.bin", "d1-0.bin", "targets.bin"]));
    // Asked again once done, it stays done.
    assert!(matches!(wf.next_step(), Ok(Next::Done)));
}

#[test]
fn requests_carry_the_stated_length_and_version() {
    let repo = Repo::new(Shape::default());
    let mut wf = repo.workflow(Limits::default());
    let mut seen = Vec::new();
    while let Ok(Next::Fetch(r)) = wf.next_step() {
        match repo.files.get(&r.name) {
            Some(b) => wf.feed(b).unwrap(),
            None => wf.not_found(),
        }
        seen.push(r);
    }
    let limits = Limits::default();
    assert_eq!((seen[0].max_length, seen[0].length_stated), (limits.max_root_length, false));
    assert_eq!((seen[1].max_length, seen[1].length_stated), (limits.max_timestamp_length, false));
    let snapshot = &seen[2];
    assert_eq!(snapshot.file, File::Snapshot);
    assert_eq!(
        (snapshot.max_length, snapshot.length_stated),
        (repo.files["1.snapshot.json"].len() as u64, true)
    );
    assert_eq!(snapshot.version, Some(1));
    assert_eq!(seen[3].max_length, repo.files["1.targets.json"].len() as u64);
}

#[test]
fn a_root_chain_longer_than_the_bound_is_not_followed_past_it() {
    let repo = Repo::new(Shape { roots: 5, ..Shape::default() });
    let limits = Limits { max_root_rotations: 2, ..Limits::default() };
    let mut wf = repo.workflow(limits);
    let (asked, error) = repo.drive(&mut wf);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        asked,
        names(&["2.root.json", "3.root.json", "timestamp.json", "1.snapshot.json", "1.targets.json"])
    );
    assert_eq!(wf.trusted().root().version, 3, "versions 4 and 5 wait for the next run");
    assert!(wf.notes()[0].contains("followed 2 root versions"), "{:?}", wf.notes());
}

#[test]
fn a_file_longer_than_its_bound_is_refused_and_stops_the_run() {
    let repo = Repo::new(Shape::default());
    let limits = Limits { max_timestamp_length: 100, ..Limits::default() };
    let mut wf = repo.workflow(limits);
    let (asked, error) = repo.drive(&mut wf);
    assert_eq!(asked, names(&["2.root.json", "timestamp.json"]));
    let error = error.expect("the timestamp is longer than 100 bytes");
    assert!(matches!(&error, Error::TooLong { file, max: 100, .. } if file == "timestamp.json"), "{error:?}");
    assert!(wf.trusted().timestamp().is_none());
    assert!(matches!(wf.next_step(), Err(Error::Order(_))), "nothing more is asked");

    // A root longer than its bound ends the chain like any refused root version.
    let repo = Repo::new(Shape { roots: 2, ..Shape::default() });
    let mut wf = repo.workflow(Limits { max_root_length: 100, ..Limits::default() });
    let (asked, error) = repo.drive(&mut wf);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(asked[..2], names(&["2.root.json", "timestamp.json"]));
    assert_eq!(wf.trusted().root().version, 1);
}

#[test]
fn a_file_longer_than_its_stated_length_is_refused() {
    let repo = Repo::new(Shape::default());
    let mut wf = repo.workflow(Limits::default());
    let mut padded = repo.files["1.snapshot.json"].clone();
    padded.push(b' ');
    loop {
        let Next::Fetch(r) = wf.next_step().unwrap() else { panic!("the run ended before the snapshot") };
        if r.file == File::Snapshot {
            let error = wf.feed(&padded).unwrap_err();
            assert!(
                matches!(error, Error::Length { expected, actual, .. } if actual == expected + 1),
                "{error:?}"
            );
            break;
        }
        match repo.files.get(&r.name) {
            Some(b) => wf.feed(b).unwrap(),
            None => wf.not_found(),
        }
    }
    assert!(wf.trusted().snapshot().is_none());
}

#[test]
fn delegations_are_bounded_in_depth() {
    let repo = Repo::new(Shape { delegations: vec![1, 1, 1, 1], ..Shape::default() });
    let mut wf = repo.workflow(Limits { max_delegation_depth: 2, ..Limits::default() });
    let (asked, error) = repo.drive(&mut wf);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(asked[asked.len() - 2..], names(&["1.d0-0.json", "1.d1-0.json"]));
    assert!(wf.notes()[0].contains("deeper than 2 levels"), "{:?}", wf.notes());
    assert!(wf.trusted().delegated("d2-0").is_none());
}

#[test]
fn delegations_are_bounded_in_number() {
    let repo = Repo::new(Shape { delegations: vec![5], ..Shape::default() });
    let mut wf = repo.workflow(Limits { max_delegated_roles: 3, ..Limits::default() });
    let (asked, error) = repo.drive(&mut wf);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(asked.iter().filter(|n| n.contains(".d0-")).count(), 3, "{asked:?}");
    assert!(wf.notes()[0].contains("more than 3 delegated roles"), "{:?}", wf.notes());
}

#[test]
fn a_refused_delegated_role_is_left_out_and_the_others_load() {
    let mut repo = Repo::new(Shape { delegations: vec![3], ..Shape::default() });
    // A role the snapshot does not list cannot even be asked for.
    let snapshot_name = "1.snapshot.json";
    let mut snapshot: Envelope = Envelope::from_slice(&repo.files[snapshot_name], "snapshot").unwrap();
    snapshot.signed["meta"].as_object_mut().unwrap().remove("d0-2.json");
    let snapshot = Envelope::sign(&snapshot.signed, &[&repo.key]).unwrap().to_bytes().unwrap();
    let timestamp: Envelope = Envelope::from_slice(&repo.files["timestamp.json"], "timestamp").unwrap();
    let mut timestamp = timestamp.signed;
    timestamp["meta"]["snapshot.json"] = serde_json::to_value(MetaFile::describing(1, &snapshot)).unwrap();
    let timestamp = Envelope::sign(&timestamp, &[&repo.key]).unwrap().to_bytes().unwrap();
    repo.files.insert(snapshot_name.into(), snapshot);
    repo.files.insert("timestamp.json".into(), timestamp);
    // And one whose file is damaged is refused when fed.
    repo.files.get_mut("1.d0-0.json").unwrap()[0] = b'[';

    let mut wf = repo.workflow(Limits::default());
    let (asked, error) = repo.drive(&mut wf);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(asked[asked.len() - 3..], names(&["1.d0-0.json", "1.d0-1.json", "refused d0-2"]));
    let loaded: Vec<&str> = wf.trusted().loaded_roles().map(|(_, r, _)| r).collect();
    assert_eq!(loaded, ["targets", "d0-1"]);
}

#[test]
fn an_expired_final_root_stops_the_run() {
    let repo = Repo::new(Shape { roots: 2, root_expired: true, ..Shape::default() });
    let mut wf = repo.workflow(Limits::default());
    let (asked, error) = repo.drive(&mut wf);
    assert_eq!(asked, names(&["2.root.json", "3.root.json"]));
    assert!(matches!(error, Some(Error::Expired { ref role, .. }) if role == "root"), "{error:?}");
    assert!(matches!(wf.next_step(), Err(Error::Order(_))));
}

#[test]
fn a_missing_top_level_file_stops_the_run() {
    let mut repo = Repo::new(Shape::default());
    repo.files.remove("1.targets.json");
    let mut wf = repo.workflow(Limits::default());
    let (asked, error) = repo.drive(&mut wf);
    assert_eq!(asked.last().map(String::as_str), Some("1.targets.json"));
    assert!(matches!(error, Some(Error::Order(_))), "{error:?}");
    assert!(wf.trusted().targets().is_none());
}

#[test]
fn a_cached_copy_answers_only_if_it_verifies() {
    let repo = Repo::new(Shape::default());
    let mut wf = repo.workflow(Limits::default());
    let request = loop {
        let Next::Fetch(r) = wf.next_step().unwrap() else { panic!("the run ended before the snapshot") };
        if r.file == File::Snapshot {
            break r;
        }
        match repo.files.get(&r.name) {
            Some(b) => wf.feed(b).unwrap(),
            None => wf.not_found(),
        }
    };
    assert!(!wf.try_cached(b"{}"), "a copy that does not verify is not taken");
    assert!(matches!(wf.next_step(), Ok(Next::Fetch(r)) if r == request), "the request stays pending");
    assert!(wf.try_cached(&repo.files[&request.name]));
    assert!(matches!(wf.next_step(), Ok(Next::Fetch(r)) if r.file == File::Targets));
}

#[test]
fn local_copies_are_floors_and_a_rotation_checks_them_again() {
    let repo = Repo::new(Shape { roots: 2, ..Shape::default() });
    let local = LocalCopies {
        timestamp: Some(repo.files["timestamp.json"].clone()),
        snapshot: Some(repo.files["1.snapshot.json"].clone()),
        targets: Some(repo.files["1.targets.json"].clone()),
    };
    let mut wf = Workflow::new(repo.first_root(), local, now(), Limits::default()).unwrap();
    assert!(wf.trusted().has_local_timestamp());
    let (_, error) = repo.drive(&mut wf);
    assert!(error.is_none(), "{error:?}");
    assert!(wf.root_rotated());
    assert!(wf.trusted().has_local_timestamp(), "the same keys still verify the local timestamp");
    assert!(!wf.timestamp_changed(), "the timestamp is the one kept locally");
}

#[test]
fn feeding_without_a_request_is_a_misuse() {
    let repo = Repo::new(Shape::default());
    let mut wf = repo.workflow(Limits::default());
    assert!(matches!(wf.feed(b"{}"), Err(Error::Order(_))));
}
