//! QEMU releases: what a destination of a given release knows beyond its VMState
//! descriptions (commands, machine types, capabilities, virtio subsections), and which
//! release a `-dump-vmstate` file comes from.
//!
//! A `-dump-vmstate` file names no release. [`guess_release`] compares its device classes
//! and their versions with the signatures of the releases this crate knows (`releases.tsv`)
//! and says how sure the answer is.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::schema::{Origin, Schema};

/// A QEMU release, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Release {
    /// The major number.
    pub major: u16,
    /// The minor number.
    pub minor: u16,
}

impl Release {
    /// A release from its numbers.
    pub const fn new(major: u16, minor: u16) -> Release {
        Release { major, minor }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Serialize for Release {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Release {
    type Err = String;

    /// `X.Y`, or `X.Y.Z` (the micro number does not change what a release loads).
    fn from_str(text: &str) -> Result<Release, String> {
        let mut parts = text.split('.');
        let number = |part: Option<&str>| part.and_then(|p| p.parse::<u16>().ok());
        match (number(parts.next()), number(parts.next())) {
            (Some(major), Some(minor))
                if parts.next().map_or(true, |p| p.parse::<u16>().is_ok()) =>
            {
                Ok(Release { major, minor })
            }
            _ => Err(format!(
                "{text:?} is not a QEMU release such as 7.2 or 10.0"
            )),
        }
    }
}

/// Releases whose `-dump-vmstate` signature this crate holds.
const SIGNATURES: &str = include_str!("releases.tsv");

/// The first release whose loader knows each command past PACKAGED's neighbours, by number:
/// 0x01 OPEN_RETURN_PATH to 0x0a ENABLE_COLO are older than every release known here.
const COMMANDS: &[(u16, &str, Release)] = &[(0x0b, "SWITCHOVER_START", Release::new(10, 0))];
/// The last command number every release known here knows.
const OLDEST_COMMANDS: u16 = 0x0a;
/// The newest release whose list of commands is known here (11.x adds none to 10.0's).
const COMMANDS_KNOWN_UP_TO: Release = Release::new(11, 1);

/// Capabilities a destination compares with the configuration section's list, and the
/// first release that knows each (absent: older than every release known here).
const CAPABILITIES: &[(&str, Option<Release>)] = &[
    ("x-ignore-shared", None),
    ("mapped-ram", Some(Release::new(9, 0))),
];

/// Core virtio subsections newer than some release known here, with the first release that
/// reads them (`virtio/128bit_features`: QEMU 10.2, for feature bits 64 to 127).
const VIRTIO_SUBSECTIONS: &[(&str, Release)] = &[("virtio/128bit_features", Release::new(10, 2))];

/// Subsections of a device's own state (inside the `virtio` field, which no dump shows)
/// that some release does not read, with the first release that does: QEMU 5.1 to 6.1
/// know virtio-balloon's page-poison only by their misspelled name.
const DEVICE_SUBSECTIONS: &[(&str, Release)] =
    &[("virtio-balloon-device/page-poison", Release::new(6, 2))];

/// Whether `release` reads device subsection `name` of a virtio device's own state: `None`
/// when nothing is known here of it (the destination's schema decides).
pub fn knows_device_subsection(release: Release, name: &str) -> Option<bool> {
    DEVICE_SUBSECTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, since)| release >= *since)
}

/// The first release known here whose loader refuses a virtqueue saved with more entries
/// than the destination's device allocates ("vring.num ... exceeds allocated max"):
/// measured, 11.1 refuses a stream of 10.0.13 whose virtio-blk queue has 1024 entries,
/// which 10.0 itself loads (11.0 was not measured).
const CHECKS_QUEUE_SIZE_SINCE: Release = Release::new(11, 1);

/// The entries a device of VMState `kind` allocates per queue by default on every release
/// known here (its queue-size property), when that is known.
const DEFAULT_QUEUE_SIZES: &[(&str, u32)] = &[("virtio-blk", 256)];

/// The most entries a queue of device `kind` may have been saved with for `release` to
/// load it with the device's default queue size: `None` when the release does not check
/// or the size is not known here.
pub fn queue_size_limit(release: Release, kind: &str) -> Option<u32> {
    if release < CHECKS_QUEUE_SIZE_SINCE {
        return None;
    }
    DEFAULT_QUEUE_SIZES
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, size)| *size)
}

/// The releases whose signatures are known, oldest first.
pub fn known_releases() -> Vec<Release> {
    let mut out: Vec<Release> = signatures().keys().copied().collect();
    out.dedup();
    out
}

fn signatures() -> BTreeMap<Release, BTreeMap<&'static str, u32>> {
    let mut out: BTreeMap<Release, BTreeMap<&'static str, u32>> = BTreeMap::new();
    for line in SIGNATURES.lines().filter(|l| !l.starts_with('#')) {
        let mut cols = line.split('\t');
        if let (Some(Ok(release)), Some(class), Some(Ok(version))) = (
            cols.next().map(str::parse::<Release>),
            cols.next(),
            cols.next().map(str::parse::<u32>),
        ) {
            out.entry(release).or_default().insert(class, version);
        }
    }
    out
}

/// How sure a [`ReleaseGuess`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Certainty {
    /// Given by the user.
    Stated,
    /// Every device class and version matches a known release's.
    Exact,
    /// Most classes match one release best, not all.
    Likely,
    /// Nothing to go by.
    Unknown,
}

/// The release a destination (or source) is taken to be, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseGuess {
    /// The release, when one is taken.
    pub release: Option<Release>,
    /// How sure.
    pub certainty: Certainty,
    /// How it was found, in words.
    pub how: String,
}

impl ReleaseGuess {
    /// A release the user states.
    pub fn stated(release: Release) -> ReleaseGuess {
        ReleaseGuess {
            release: Some(release),
            certainty: Certainty::Stated,
            how: format!("QEMU {release}, as stated"),
        }
    }
}

/// The release a schema comes from, judged by its device classes and their versions.
pub fn guess_release(schema: &Schema) -> ReleaseGuess {
    if schema.origin == Origin::Stream {
        return ReleaseGuess {
            release: None,
            certainty: Certainty::Unknown,
            how: "a stream names no QEMU release and carries too few sections to tell".to_owned(),
        };
    }
    let classes: BTreeMap<&str, u32> = schema
        .sections
        .iter()
        .map(|s| (s.name.as_str(), s.version_id))
        .collect();
    let mut best: Option<(Release, usize, usize)> = None;
    for (release, signature) in signatures() {
        let union = signature.len().saturating_add(
            classes
                .keys()
                .filter(|c| !signature.contains_key(*c))
                .count(),
        );
        let agree = signature
            .iter()
            .filter(|(class, version)| classes.get(*class) == Some(*version))
            .count();
        if best.map_or(true, |(_, a, u)| {
            agree.saturating_mul(u) > a.saturating_mul(union)
        }) {
            best = Some((release, agree, union));
        }
    }
    match best {
        Some((release, agree, union)) if agree == union => ReleaseGuess {
            release: Some(release),
            certainty: Certainty::Exact,
            how: format!(
                "QEMU {release}: all {union} device classes and their versions are those of {release}"
            ),
        },
        Some((release, agree, union)) if agree.saturating_mul(10) >= union.saturating_mul(9) => {
            ReleaseGuess {
                release: Some(release),
                certainty: Certainty::Likely,
                how: format!(
                    "probably QEMU {release}: {agree} of {union} device classes and versions are \
                     those of {release}, the closest of the releases known ({})",
                    list(&known_releases())
                ),
            }
        }
        _ => ReleaseGuess {
            release: None,
            certainty: Certainty::Unknown,
            how: format!(
                "not a release known here ({}): its device classes match none of them",
                list(&known_releases())
            ),
        },
    }
}

fn list(releases: &[Release]) -> String {
    releases
        .iter()
        .map(Release::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `release` knows command `number`: `None` when that is not known here.
pub fn knows_command(release: Release, number: u16) -> Option<bool> {
    if (1..=OLDEST_COMMANDS).contains(&number) {
        return Some(true);
    }
    match COMMANDS.iter().find(|(n, _, _)| *n == number) {
        Some((_, _, since)) => Some(release >= *since),
        None if release <= COMMANDS_KNOWN_UP_TO => Some(false),
        None => None,
    }
}

/// Whether `release` knows capability `name`: `None` when that is not known here.
pub fn knows_capability(release: Release, name: &str) -> Option<bool> {
    CAPABILITIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, since)| since.map_or(true, |s| release >= s))
}

/// Whether `release` reads core virtio subsection `name`: `None` when that is not known.
pub fn knows_virtio_subsection(release: Release, name: &str) -> Option<bool> {
    match VIRTIO_SUBSECTIONS.iter().find(|(n, _)| *n == name) {
        Some((_, since)) => Some(release >= *since),
        None if crate::virtio::CORE_SUBSECTIONS.contains(&name) => Some(true),
        None => Some(false),
    }
}

/// The release a versioned machine type (`pc-q35-10.0`, `pc-i440fx-7.2`, `virt-9.2`,
/// `pseries-8.0`, `s390-ccw-virtio-9.1`) first appeared in: its version suffix.
pub fn machine_release(machine: &str) -> Option<Release> {
    let (_, version) = machine.rsplit_once('-')?;
    version.parse().ok()
}

/// A machine type of the same family as `machine`, for `release`: the name with its version
/// suffix replaced (`pc-q35-10.0` for 7.2 is `pc-q35-7.2`).
pub fn machine_for_release(machine: &str, release: Release) -> Option<String> {
    let (family, _) = machine.rsplit_once('-')?;
    machine_release(machine)?;
    Some(format!("{family}-{release}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_and_compare() {
        let r: Release = "10.0".parse().unwrap();
        assert_eq!(r, Release::new(10, 0));
        assert_eq!("7.2.22".parse::<Release>().unwrap(), Release::new(7, 2));
        assert!(Release::new(7, 2) < r);
        assert!("10".parse::<Release>().is_err());
        assert!("x.y".parse::<Release>().is_err());
    }

    #[test]
    fn commands_capabilities_and_machines_follow_the_release() {
        let (old, new) = (Release::new(7, 2), Release::new(10, 0));
        assert_eq!(knows_command(old, 0x0b), Some(false));
        assert_eq!(knows_command(new, 0x0b), Some(true));
        assert_eq!(knows_command(old, 0x09), Some(true));
        assert_eq!(knows_capability(old, "mapped-ram"), Some(false));
        assert_eq!(knows_capability(new, "mapped-ram"), Some(true));
        assert_eq!(
            knows_virtio_subsection(new, "virtio/128bit_features"),
            Some(false)
        );
        assert_eq!(knows_virtio_subsection(old, "virtio/started"), Some(true));
        assert_eq!(machine_release("pc-q35-10.0"), Some(new));
        assert_eq!(
            machine_for_release("pc-q35-10.0", old).as_deref(),
            Some("pc-q35-7.2")
        );
        assert_eq!(machine_for_release("microvm", old), None);
    }

    #[test]
    fn every_signature_is_read() {
        let known = known_releases();
        assert_eq!(
            known,
            vec![
                Release::new(5, 2),
                Release::new(7, 2),
                Release::new(10, 0),
                Release::new(11, 1)
            ]
        );
        assert_eq!(
            knows_virtio_subsection(Release::new(11, 1), "virtio/128bit_features"),
            Some(true)
        );
        assert_eq!(knows_command(Release::new(11, 1), 0x0b), Some(true));
        assert_eq!(knows_command(Release::new(11, 1), 0x0c), Some(false));
        assert_eq!(knows_command(Release::new(12, 0), 0x0c), None);
        let sigs = signatures();
        assert!(sigs[&Release::new(10, 0)].contains_key("vmclock"));
        assert!(!sigs[&Release::new(7, 2)].contains_key("vmclock"));
    }
}
