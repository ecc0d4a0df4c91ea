//! Property tests of the TUF core: metadata parsing never panics on any bytes or JSON, and
//! the trusted set follows a reference model of the client workflow (specification
//! section 5) through generated histories of a repository: root rotations, new
//! publications, time passing, and at every step files that are rolled back, expired,
//! forged, tampered with or mixed from other publications. Versions never go back, bad
//! signatures and thresholds are refused, expired metadata is refused, and a refused file
//! leaves the trusted set exactly as it was.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use super::canonical;
use super::client::TrustedSet;
use super::error::Error;
use super::keys::PrivateKey;
use super::metadata::{
    DelegatedRole, Delegations, Envelope, MetaFile, RoleKeys, Root, SPEC_VERSION, Signature, Snapshot,
    TargetFile, Targets, Timestamp, format_expires,
};

use crate::testing::proptest_config as config;

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}
/// The delegated role of the model, delegated by `targets` for `d/*`.
const D: &str = "d";

fn start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

/// One metadata file as served, with what the model knows about it.
#[derive(Clone)]
struct File {
    bytes: Vec<u8>,
    version: u64,
    expires: SystemTime,
    /// The pool index of the key that signed it.
    signer: usize,
    /// Changed after signing: no signature over it can verify.
    tampered: bool,
    /// Timestamp: the snapshot version it names, and the snapshot bytes its hashes
    /// describe (when the publication writes hashes).
    snap_v: u64,
    describes: Option<Vec<u8>>,
    /// Snapshot: the versions of targets and `d` it names, and their bytes if hashed.
    tg_v: u64,
    d_v: u64,
    describes_tg: Option<Vec<u8>>,
    describes_d: Option<Vec<u8>>,
    /// Targets: the key it delegates `d` to.
    d_key: usize,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{} signer {} tampered {}", self.version, self.signer, self.tampered)
    }
}

impl File {
    fn expired(&self, now: SystemTime) -> bool {
        self.expires <= now
    }
}

/// One root version as served.
#[derive(Clone, Debug)]
struct RootFile {
    version: u64,
    bytes: Vec<u8>,
    /// Root keys (threshold 2) and the keys of the other roles (threshold 1 each).
    root_keys: Vec<usize>,
    ts_key: usize,
    snap_key: usize,
    tg_key: usize,
    signers: Vec<usize>,
    tampered: bool,
}

/// A repository's consistent set of timestamp, snapshot, targets and `d`.
#[derive(Clone, Debug)]
struct Publication {
    ts: File,
    snap: File,
    tg: File,
    d: File,
}

/// How long each role of a publication stays valid, and whether the timestamp and
/// snapshot state hashes and lengths (python-tuf writes versions only by default).
#[derive(Clone, Debug)]
struct Lifetimes {
    ts: u64,
    snap: u64,
    tg: u64,
    d: u64,
    hashes: bool,
}

/// The honest publisher: its keys, and everything it ever published.
struct Publisher {
    pool: Vec<PrivateKey>,
    root_keys: Vec<usize>,
    ts_key: usize,
    snap_key: usize,
    tg_key: usize,
    d_key: usize,
    roots: Vec<RootFile>,
    pubs: Vec<Publication>,
    now: SystemTime,
}

fn new_key(pool: &mut Vec<PrivateKey>) -> usize {
    pool.push(PrivateKey::generate().expect("key generation"));
    pool.len() - 1
}

fn sign_value<T: serde::Serialize>(pool: &[PrivateKey], signed: &T, signers: &[usize]) -> Vec<u8> {
    let keys: Vec<&PrivateKey> = signers.iter().map(|i| &pool[*i]).collect();
    Envelope::sign(signed, &keys).expect("sign").to_bytes().expect("bytes")
}

fn root_meta(
    pool: &[PrivateKey],
    version: u64,
    root_keys: &[usize],
    ts: usize,
    snap: usize,
    tg: usize,
) -> Root {
    let mut keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    let mut role = |name: &str, ids: &[usize], threshold: u64| {
        for i in ids {
            keys.insert(pool[*i].key_id(), pool[*i].public());
        }
        let keyids = ids.iter().map(|i| pool[*i].key_id()).collect();
        roles.insert(name.to_string(), RoleKeys { keyids, threshold, unrecognized: Default::default() });
    };
    role("root", root_keys, 2);
    role("timestamp", &[ts], 1);
    role("snapshot", &[snap], 1);
    role("targets", &[tg], 1);
    Root {
        type_: "root".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        // Roots do not expire in this model; their expiry has its own unit tests.
        expires: format_expires(start() + days(36_500)),
        consistent_snapshot: true,
        keys,
        roles,
        unrecognized: Default::default(),
    }
}

fn make_root(
    pool: &[PrivateKey],
    version: u64,
    root_keys: &[usize],
    (ts_key, snap_key, tg_key): (usize, usize, usize),
    signers: &[usize],
) -> RootFile {
    let meta = root_meta(pool, version, root_keys, ts_key, snap_key, tg_key);
    RootFile {
        version,
        bytes: sign_value(pool, &meta, signers),
        root_keys: root_keys.to_vec(),
        ts_key,
        snap_key,
        tg_key,
        signers: signers.to_vec(),
        tampered: false,
    }
}

fn blank(bytes: Vec<u8>, version: u64, expires: SystemTime, signer: usize) -> File {
    File {
        bytes,
        version,
        expires,
        signer,
        tampered: false,
        snap_v: 0,
        describes: None,
        tg_v: 0,
        d_v: 0,
        describes_tg: None,
        describes_d: None,
        d_key: 0,
    }
}

fn meta_file(version: u64, bytes: &[u8], hashes: bool) -> MetaFile {
    if hashes { MetaFile::describing(version, bytes) } else { MetaFile::version_only(version) }
}

impl Publisher {
    fn new() -> Publisher {
        let mut pool = Vec::new();
        let root_keys: Vec<usize> = (0..3).map(|_| new_key(&mut pool)).collect();
        let (ts_key, snap_key, tg_key, d_key) =
            (new_key(&mut pool), new_key(&mut pool), new_key(&mut pool), new_key(&mut pool));
        let mut p = Publisher {
            pool,
            root_keys,
            ts_key,
            snap_key,
            tg_key,
            d_key,
            roots: Vec::new(),
            pubs: Vec::new(),
            now: start(),
        };
        let signers = p.root_keys.clone();
        let root = make_root(&p.pool, 1, &p.root_keys, (ts_key, snap_key, tg_key), &signers);
        p.roots.push(root);
        let life = Lifetimes { ts: 30, snap: 30, tg: 30, d: 30, hashes: true };
        p.publish(true, &life);
        p
    }

    fn root(&self) -> &RootFile {
        self.roots.last().expect("a first root")
    }

    fn ts_file(&self, version: u64, snap: &File, life: &Lifetimes) -> File {
        let expires = self.now + days(life.ts);
        let mut meta = BTreeMap::new();
        meta.insert("snapshot.json".to_string(), meta_file(snap.version, &snap.bytes, life.hashes));
        let t = Timestamp {
            type_: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version,
            expires: format_expires(expires),
            meta,
            unrecognized: Default::default(),
        };
        let mut f = blank(sign_value(&self.pool, &t, &[self.ts_key]), version, expires, self.ts_key);
        f.snap_v = snap.version;
        f.describes = life.hashes.then(|| snap.bytes.clone());
        f
    }

    /// A new publication: a new `d` (when `new_d`), targets, snapshot and timestamp.
    fn publish(&mut self, new_d: bool, life: &Lifetimes) {
        let last = self.pubs.last().cloned();
        let version = |f: Option<&File>| f.map_or(1, |f| f.version + 1);
        let d = match (&last, new_d) {
            (Some(p), false) => p.d.clone(),
            _ => {
                let v = version(last.as_ref().map(|p| &p.d));
                let expires = self.now + days(life.d);
                let name = format!("d/{v}.bin");
                let t = Targets {
                    type_: "targets".into(),
                    spec_version: SPEC_VERSION.into(),
                    version: v,
                    expires: format_expires(expires),
                    targets: [(name, TargetFile::from_bytes(v.to_string().as_bytes(), None))].into(),
                    delegations: None,
                    unrecognized: Default::default(),
                };
                blank(sign_value(&self.pool, &t, &[self.d_key]), v, expires, self.d_key)
            }
        };
        let tg_v = version(last.as_ref().map(|p| &p.tg));
        let expires = self.now + days(life.tg);
        let d_pub = self.pool[self.d_key].public();
        let delegations = Delegations {
            keys: [(self.pool[self.d_key].key_id(), d_pub)].into(),
            roles: vec![DelegatedRole {
                name: D.into(),
                keyids: vec![self.pool[self.d_key].key_id()],
                threshold: 1,
                terminating: false,
                paths: Some(vec!["d/*".into()]),
                path_hash_prefixes: None,
                unrecognized: Default::default(),
            }],
            unrecognized: Default::default(),
        };
        let t = Targets {
            type_: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version: tg_v,
            expires: format_expires(expires),
            targets: [("top.bin".to_string(), TargetFile::from_bytes(b"top", None))].into(),
            delegations: Some(delegations),
            unrecognized: Default::default(),
        };
        let mut tg = blank(sign_value(&self.pool, &t, &[self.tg_key]), tg_v, expires, self.tg_key);
        tg.d_key = self.d_key;

        let snap_v = version(last.as_ref().map(|p| &p.snap));
        let expires = self.now + days(life.snap);
        let s = Snapshot {
            type_: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: snap_v,
            expires: format_expires(expires),
            meta: [
                ("targets.json".to_string(), meta_file(tg_v, &tg.bytes, life.hashes)),
                (format!("{D}.json"), meta_file(d.version, &d.bytes, life.hashes)),
            ]
            .into(),
            unrecognized: Default::default(),
        };
        let mut snap = blank(sign_value(&self.pool, &s, &[self.snap_key]), snap_v, expires, self.snap_key);
        snap.tg_v = tg_v;
        snap.d_v = d.version;
        snap.describes_tg = life.hashes.then(|| tg.bytes.clone());
        snap.describes_d = life.hashes.then(|| d.bytes.clone());

        let ts = self.ts_file(version(last.as_ref().map(|p| &p.ts)), &snap, life);
        self.pubs.push(Publication { ts, snap, tg, d });
    }

    /// Re-signs the timestamp only (a periodic refresh).
    fn refresh_timestamp(&mut self, life: &Lifetimes) {
        let mut p = self.pubs.last().cloned().expect("a first publication");
        p.ts = self.ts_file(p.ts.version + 1, &p.snap, life);
        self.pubs.push(p);
    }

    /// A new root version with some keys replaced, signed by the old and the new root
    /// keys, then a publication under the new keys.
    fn rotate(&mut self, rot: &Rotate, life: &Lifetimes) {
        let old_root_keys = self.root_keys.clone();
        if rot.root {
            let fresh = new_key(&mut self.pool);
            self.root_keys[0] = fresh;
        }
        if rot.ts {
            self.ts_key = new_key(&mut self.pool);
        }
        if rot.snap {
            self.snap_key = new_key(&mut self.pool);
        }
        if rot.tg {
            self.tg_key = new_key(&mut self.pool);
        }
        if rot.d {
            self.d_key = new_key(&mut self.pool);
        }
        let mut signers = old_root_keys;
        for k in &self.root_keys {
            if !signers.contains(k) {
                signers.push(*k);
            }
        }
        let version = self.root().version + 1;
        let root = make_root(
            &self.pool,
            version,
            &self.root_keys,
            (self.ts_key, self.snap_key, self.tg_key),
            &signers,
        );
        self.roots.push(root);
        self.publish(true, life);
    }
}

/// The same signed content signed by a key nobody trusts.
fn forge(pool: &mut Vec<PrivateKey>, f: &File) -> File {
    let stranger = new_key(pool);
    let env = Envelope::from_slice(&f.bytes, "test file").expect("our own file parses");
    let bytes = canonical::encode(&env.signed).expect("canonical");
    let key = &pool[stranger];
    let forged = Envelope {
        signed: env.signed,
        signatures: vec![Signature { keyid: key.key_id(), sig: key.sign(&bytes) }],
    };
    File { bytes: forged.to_bytes().expect("bytes"), signer: stranger, ..f.clone() }
}

/// The same file with its version changed after signing.
fn tamper(bytes: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(bytes).expect("our own file parses");
    let version = v["signed"]["version"].as_u64().unwrap_or(0);
    v["signed"]["version"] = Value::from(version + 1000);
    serde_json::to_vec(&v).expect("json")
}

/// What the device keeps between refreshes (the updater's `trust/` directory).
#[derive(Clone, Debug)]
struct Device {
    root: RootFile,
    ts: Option<File>,
    snap: Option<File>,
    tg: Option<File>,
}

/// Which way a call went, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Threshold,
    Version,
    Expired,
    HashOrLength,
}

fn outcome<T>(r: &Result<T, Error>) -> Outcome {
    match r {
        Ok(_) => Outcome::Accepted,
        Err(Error::Threshold { .. }) => Outcome::Threshold,
        Err(Error::Version { .. }) => Outcome::Version,
        Err(Error::Expired { .. }) => Outcome::Expired,
        Err(Error::Hash { .. } | Error::Length { .. }) => Outcome::HashOrLength,
        Err(other) => panic!("an error the model never causes: {other}"),
    }
}

// The reference model of each step of the workflow, in the order the specification checks.

fn model_root(trusted: &RootFile, next: &RootFile) -> Outcome {
    let count = |keys: &[usize]| next.signers.iter().filter(|s| keys.contains(s)).count();
    if next.tampered || count(&trusted.root_keys) < 2 || count(&next.root_keys) < 2 {
        Outcome::Threshold
    } else if next.version != trusted.version + 1 {
        Outcome::Version
    } else {
        Outcome::Accepted
    }
}

/// The local copy that still verifies under `root` acts as a version floor.
fn floor(copy: &Option<File>, key: usize) -> Option<&File> {
    copy.as_ref().filter(|f| f.signer == key)
}

fn model_timestamp(d: &Device, new: &File, now: SystemTime) -> Outcome {
    if new.tampered || new.signer != d.root.ts_key {
        return Outcome::Threshold;
    }
    if let Some(prev) = floor(&d.ts, d.root.ts_key) {
        if new.version < prev.version || new.snap_v < prev.snap_v {
            return Outcome::Version;
        }
        if new.version == prev.version {
            if new.snap_v != prev.snap_v {
                return Outcome::Version;
            }
            return if prev.expired(now) { Outcome::Expired } else { Outcome::Accepted };
        }
    }
    if new.expired(now) { Outcome::Expired } else { Outcome::Accepted }
}

fn model_snapshot(d: &Device, ts: &File, new: &File, now: SystemTime) -> Outcome {
    if ts.describes.as_ref().is_some_and(|b| *b != new.bytes) {
        return Outcome::HashOrLength;
    }
    if new.tampered || new.signer != d.root.snap_key {
        return Outcome::Threshold;
    }
    if new.version != ts.snap_v {
        return Outcome::Version;
    }
    if let Some(prev) = floor(&d.snap, d.root.snap_key)
        && (new.version < prev.version || new.tg_v < prev.tg_v || new.d_v < prev.d_v)
    {
        return Outcome::Version;
    }
    if new.expired(now) { Outcome::Expired } else { Outcome::Accepted }
}

fn model_targets(d: &Device, snap: &File, new: &File, now: SystemTime) -> Outcome {
    if snap.describes_tg.as_ref().is_some_and(|b| *b != new.bytes) {
        return Outcome::HashOrLength;
    }
    if new.tampered || new.signer != d.root.tg_key {
        return Outcome::Threshold;
    }
    if new.version != snap.tg_v {
        return Outcome::Version;
    }
    if floor(&d.tg, d.root.tg_key).is_some_and(|prev| new.version < prev.version) {
        return Outcome::Version;
    }
    if new.expired(now) { Outcome::Expired } else { Outcome::Accepted }
}

fn model_delegated(snap: &File, tg: &File, new: &File, now: SystemTime) -> Outcome {
    if snap.describes_d.as_ref().is_some_and(|b| *b != new.bytes) {
        return Outcome::HashOrLength;
    }
    if new.tampered || new.signer != tg.d_key {
        return Outcome::Threshold;
    }
    if new.version != snap.d_v {
        return Outcome::Version;
    }
    if new.expired(now) { Outcome::Expired } else { Outcome::Accepted }
}

// The generated history.

#[derive(Debug, Clone)]
struct Rotate {
    root: bool,
    ts: bool,
    snap: bool,
    tg: bool,
    d: bool,
}

#[derive(Debug, Clone)]
enum Publish {
    Nothing,
    Timestamp,
    All { new_d: bool },
    Rotate(Rotate),
}

/// What the network serves for one role.
#[derive(Debug, Clone)]
enum Pick {
    /// What an honest server serves: the version the trusted parent names (for the
    /// timestamp, the newest).
    Named,
    /// The newest published.
    Latest,
    /// Any earlier publication's (a rollback, or a mix of publications).
    Older(Index),
    /// The right content signed by a key nobody trusts.
    Forged,
    /// The right file changed after signing.
    Tampered,
}

/// What the network serves as the next root version.
#[derive(Debug, Clone)]
enum RootAttack {
    Honest,
    /// A new root signed only by keys the trusted root does not know.
    OnlyNewKeys,
    /// The next root signed by one root key where two are needed.
    BelowThreshold,
    /// The next root changed after signing.
    Tampered,
    /// A root two versions ahead, validly signed.
    SkipsAVersion,
    /// The trusted root again.
    Replay,
}

#[derive(Debug, Clone)]
struct Step {
    days: u64,
    publish: Publish,
    life: Lifetimes,
    root: RootAttack,
    ts: Pick,
    snap: Pick,
    tg: Pick,
    d: Pick,
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        12 => Just(Pick::Named),
        2 => Just(Pick::Latest),
        3 => any::<Index>().prop_map(Pick::Older),
        1 => Just(Pick::Forged),
        1 => Just(Pick::Tampered),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let publish = prop_oneof![
        3 => Just(Publish::Nothing),
        3 => Just(Publish::Timestamp),
        3 => any::<bool>().prop_map(|new_d| Publish::All { new_d }),
        1 => (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(root, ts, snap, tg, d)| Publish::Rotate(Rotate { root, ts, snap, tg, d })),
    ];
    let life = prop_oneof![Just(0u64), 1u64..4, 4u64..12];
    let lifetimes = (life.clone(), life.clone(), life.clone(), life, any::<bool>())
        .prop_map(|(ts, snap, tg, d, hashes)| Lifetimes { ts, snap, tg, d, hashes });
    let root = prop_oneof![
        12 => Just(RootAttack::Honest),
        1 => Just(RootAttack::OnlyNewKeys),
        1 => Just(RootAttack::BelowThreshold),
        1 => Just(RootAttack::Tampered),
        1 => Just(RootAttack::SkipsAVersion),
        1 => Just(RootAttack::Replay),
    ];
    (0u64..3, publish, lifetimes, root, pick(), pick(), pick(), pick()).prop_map(
        |(days, publish, life, root, ts, snap, tg, d)| Step { days, publish, life, root, ts, snap, tg, d },
    )
}

/// The file an honest or hostile server gives for one role.
fn serve(p: &mut Publisher, pick: &Pick, named: Option<u64>, role: impl Fn(&Publication) -> &File) -> File {
    let latest = role(p.pubs.last().expect("a publication")).clone();
    let named_file = named
        .and_then(|v| p.pubs.iter().map(&role).find(|f| f.version == v).cloned())
        .unwrap_or_else(|| latest.clone());
    match pick {
        Pick::Named => named_file,
        Pick::Latest => latest,
        Pick::Older(i) => role(&p.pubs[i.index(p.pubs.len())]).clone(),
        Pick::Forged => forge(&mut p.pool, &named_file),
        Pick::Tampered => File { bytes: tamper(&named_file.bytes), tampered: true, ..named_file },
    }
}

/// The next root the network serves after `trusted`, if any.
fn serve_root(p: &mut Publisher, attack: &RootAttack, trusted: &RootFile) -> Option<RootFile> {
    let v = trusted.version + 1;
    let honest = p.roots.get(v as usize - 1).cloned();
    let keys = (trusted.ts_key, trusted.snap_key, trusted.tg_key);
    Some(match attack {
        RootAttack::Honest => return honest,
        RootAttack::OnlyNewKeys => {
            let fresh: Vec<usize> = (0..3).map(|_| new_key(&mut p.pool)).collect();
            make_root(&p.pool, v, &fresh, keys, &fresh)
        }
        RootAttack::BelowThreshold => {
            let mut r =
                honest.unwrap_or_else(|| make_root(&p.pool, v, &trusted.root_keys, keys, &trusted.root_keys));
            let one = r.signers[..1].to_vec();
            let meta = root_meta(&p.pool, r.version, &r.root_keys, r.ts_key, r.snap_key, r.tg_key);
            r.bytes = sign_value(&p.pool, &meta, &one);
            r.signers = one;
            r
        }
        RootAttack::Tampered => {
            let r =
                honest.unwrap_or_else(|| make_root(&p.pool, v, &trusted.root_keys, keys, &trusted.root_keys));
            RootFile { bytes: tamper(&r.bytes), tampered: true, ..r }
        }
        RootAttack::SkipsAVersion => make_root(&p.pool, v + 1, &trusted.root_keys, keys, &trusted.root_keys),
        RootAttack::Replay => trusted.clone(),
    })
}

/// Checks one call against the model: the same outcome, and on refusal an unchanged set.
fn check<T>(
    what: &str,
    set: &TrustedSet,
    before: String,
    result: &Result<T, Error>,
    expected: Outcome,
) -> Result<(), TestCaseError> {
    let got = outcome(result);
    prop_assert_eq!(got, expected, "{}: {:?}", what, result.as_ref().err().map(ToString::to_string));
    if result.is_err() {
        prop_assert_eq!(format!("{set:?}"), before, "{}: a refused file changed the trusted set", what);
    }
    Ok(())
}

/// One refresh, as the device's updater runs it, checking each call; stops at the first
/// refusal, keeping what was accepted before it.
fn refresh(p: &mut Publisher, d: &mut Device, step: &Step) -> Result<(), TestCaseError> {
    let now = p.now;
    let local = |f: &Option<File>| f.as_ref().map(|f| f.bytes.clone());
    let load = |d: &Device| {
        TrustedSet::load_local(
            &d.root.bytes,
            local(&d.ts).as_deref(),
            local(&d.snap).as_deref(),
            local(&d.tg).as_deref(),
            now,
        )
        .expect("the device's own copies always load")
    };
    let mut set = load(d);
    let first_root = d.root.version;
    // The attack, if any, is on the first root the device asks for.
    let mut attack = step.root.clone();
    while let Some(next) = serve_root(p, &attack, &d.root) {
        attack = RootAttack::Honest;
        let before = format!("{set:?}");
        let r = set.update_root(&next.bytes);
        check("root", &set, before, &r, model_root(&d.root, &next))?;
        if r.is_err() {
            return Ok(());
        }
        prop_assert!(next.version > d.root.version);
        d.root = next;
    }
    set.check_root_expiry().expect("roots do not expire in this model");
    if d.root.version != first_root {
        set = load(d);
    }

    let ts = serve(p, &step.ts, None, |p| &p.ts);
    let before = format!("{set:?}");
    let r = set.update_timestamp(&ts.bytes);
    check("timestamp", &set, before, &r, model_timestamp(d, &ts, now))?;
    if r.is_err() {
        return Ok(());
    }
    if let Some(old) = &d.ts {
        prop_assert!(
            ts.version >= old.version,
            "timestamp went back from v{} to v{}",
            old.version,
            ts.version
        );
    }
    if d.ts.as_ref().is_none_or(|old| old.version != ts.version) {
        d.ts = Some(ts);
    }
    let ts = d.ts.clone().expect("just set");

    let snap = serve(p, &step.snap, Some(ts.snap_v), |p| &p.snap);
    let before = format!("{set:?}");
    let r = set.update_snapshot(&snap.bytes);
    check("snapshot", &set, before, &r, model_snapshot(d, &ts, &snap, now))?;
    if r.is_err() {
        return Ok(());
    }
    if let Some(old) = &d.snap {
        prop_assert!(
            snap.version >= old.version,
            "snapshot went back from v{} to v{}",
            old.version,
            snap.version
        );
    }
    d.snap = Some(snap.clone());

    let tg = serve(p, &step.tg, Some(snap.tg_v), |p| &p.tg);
    let before = format!("{set:?}");
    let r = set.update_targets(&tg.bytes);
    check("targets", &set, before, &r, model_targets(d, &snap, &tg, now))?;
    if r.is_err() {
        return Ok(());
    }
    if let Some(old) = &d.tg {
        prop_assert!(tg.version >= old.version, "targets went back from v{} to v{}", old.version, tg.version);
    }
    d.tg = Some(tg.clone());

    let dl = serve(p, &step.d, Some(snap.d_v), |p| &p.d);
    let before = format!("{set:?}");
    let r = set.update_delegated_targets(&dl.bytes, D, "targets");
    check("delegated", &set, before, &r, model_delegated(&snap, &tg, &dl, now))?;
    if r.is_ok() {
        let found = set.find_target(&format!("d/{}.bin", dl.version));
        prop_assert!(found.is_some(), "the delegated role's target resolves");
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn the_trusted_set_follows_the_reference_model(steps in prop::collection::vec(step(), 1..14)) {
        let mut p = Publisher::new();
        let mut device = Device { root: p.roots[0].clone(), ts: None, snap: None, tg: None };
        for step in &steps {
            p.now += days(step.days);
            match &step.publish {
                Publish::Nothing => {}
                Publish::Timestamp => p.refresh_timestamp(&step.life),
                Publish::All { new_d } => p.publish(*new_d, &step.life),
                Publish::Rotate(r) => p.rotate(r, &step.life),
            }
            refresh(&mut p, &mut device, step)?;
        }
    }
}

// Parsing: no input makes any entry point panic, and no unsigned input is trusted.

/// Any JSON, with a bias towards the field names and values TUF metadata uses so that
/// parsing gets past the first checks.
fn json() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "_type",
            "spec_version",
            "version",
            "expires",
            "keys",
            "roles",
            "meta",
            "targets",
            "delegations",
            "signed",
            "signatures",
            "keyid",
            "sig",
            "keyids",
            "threshold",
            "length",
            "hashes",
            "sha256",
            "consistent_snapshot",
            "snapshot.json",
            "targets.json",
            "root",
            "timestamp",
            "snapshot",
            "name",
            "paths",
            "terminating",
            "path_hash_prefixes",
            "keytype",
            "scheme",
            "keyval",
            "public",
            "custom",
        ])
        .prop_map(str::to_string),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20..1e20f64).prop_map(Value::from),
        prop::sample::select(vec![
            "root",
            "timestamp",
            "snapshot",
            "targets",
            "1.0.31",
            "1.0",
            "2.0.0",
            "2030-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "ed25519",
            "",
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(name.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The fixture repository's trusted set after each step of the workflow.
fn phases(p: &Publisher) -> Vec<TrustedSet> {
    let now = p.now;
    let publication = &p.pubs[0];
    let mut out = Vec::new();
    let mut set = TrustedSet::new(&p.roots[0].bytes, now).expect("fixture root");
    out.push(set.clone());
    set.update_timestamp(&publication.ts.bytes).expect("fixture timestamp");
    out.push(set.clone());
    set.update_snapshot(&publication.snap.bytes).expect("fixture snapshot");
    out.push(set.clone());
    set.update_targets(&publication.tg.bytes).expect("fixture targets");
    out.push(set);
    out
}

/// Feeds `bytes` to every entry point at every phase: no panic, and nothing unsigned
/// (or signed by nobody the set trusts) is accepted or changes the set.
fn feed_everywhere(p: &Publisher, fixtures: &[TrustedSet], bytes: &[u8]) -> Result<(), TestCaseError> {
    let now = p.now;
    if let Ok(env) = Envelope::from_slice(bytes, "input") {
        let _ = env.parse::<Root>();
        let _ = env.parse::<Timestamp>();
        let _ = env.parse::<Snapshot>();
        let _ = env.parse::<Targets>();
        let _ = env.canonical_signed();
    }
    prop_assert!(TrustedSet::new(bytes, now).is_err(), "an unsigned root was trusted");
    let local = TrustedSet::load_local(&p.roots[0].bytes, Some(bytes), Some(bytes), Some(bytes), now);
    prop_assert!(local.is_ok(), "unusable local copies are ignored, not fatal");
    for (phase, fixture) in fixtures.iter().enumerate() {
        let before = format!("{fixture:?}");
        let mut set = fixture.clone();
        let results = [
            set.update_root(bytes).is_err(),
            set.update_timestamp(bytes).is_err(),
            set.update_snapshot(bytes).is_err(),
            set.update_targets(bytes).is_err(),
            set.update_delegated_targets(bytes, D, "targets").is_err(),
        ];
        prop_assert!(results.iter().all(|refused| *refused), "phase {}: {:?}", phase, results);
        prop_assert_eq!(format!("{set:?}"), before, "phase {}: refused input changed the set", phase);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_bytes_are_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let p = fixture();
        feed_everywhere(&p.0, &p.1, &bytes)?;
    }

    #[test]
    fn any_json_is_refused_without_panic(v in json(), wrap in any::<bool>()) {
        let p = fixture();
        let v = if wrap { serde_json::json!({"signed": v, "signatures": []}) } else { v };
        let bytes = serde_json::to_vec(&v).expect("json");
        feed_everywhere(&p.0, &p.1, &bytes)?;
    }

    /// Valid metadata with one value anywhere in its signed part replaced or removed:
    /// whatever the change, the signature no longer covers it and it is refused.
    #[test]
    fn any_change_to_signed_metadata_is_refused(which in 0usize..5, at in any::<Index>(), new in json(), remove in any::<bool>()) {
        let p = fixture();
        let publication = &p.0.pubs[0];
        let file = [&p.0.roots[0].bytes, &publication.ts.bytes, &publication.snap.bytes, &publication.tg.bytes, &publication.d.bytes][which];
        let mut v: Value = serde_json::from_slice(file).expect("fixture parses");
        let mut paths = Vec::new();
        pointers(&v["signed"], "/signed".into(), &mut paths);
        let path = &paths[at.index(paths.len())];
        let original = v.clone();
        if remove && path != "/signed" {
            let (parent, key) = path.rsplit_once('/').expect("a child path");
            match v.pointer_mut(parent) {
                Some(Value::Object(m)) => { m.remove(&key.replace("~1", "/").replace("~0", "~")); }
                Some(Value::Array(a)) => { let i: usize = key.parse().expect("index"); a.remove(i); }
                _ => {}
            }
        } else if let Some(slot) = v.pointer_mut(path) {
            *slot = new;
        }
        prop_assume!(v["signed"] != original["signed"]);
        let bytes = serde_json::to_vec(&v).expect("json");
        feed_everywhere(&p.0, &p.1, &bytes)?;
    }
}

/// JSON pointers of every value under `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                pointers(child, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// One repository and its sets at each phase, made once (key generation and signing
/// would otherwise dominate every case).
fn fixture() -> &'static (Publisher, Vec<TrustedSet>) {
    static FIXTURE: std::sync::OnceLock<(Publisher, Vec<TrustedSet>)> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let p = Publisher::new();
        let sets = phases(&p);
        (p, sets)
    })
}
