//! What this crate holds of each QEMU release for x86, read off Debian's builds by
//! `scripts/release-schemas.sh`: the `-dump-vmstate` output of each release running each
//! pc and q35 machine type of the bundled releases it has (`crates/vmstate/schemas/`), and
//! every machine type it has, with its aliases and default (`machines.tsv`).
//!
//! ```
//! use vmstate::compat::{bundled, Release};
//!
//! let release = Release::new(11, 1);
//! // `q35` is the release's newest q35 machine, as QEMU resolves it.
//! assert_eq!(bundled::resolve_machine(release, "q35"), Some("pc-q35-11.1"));
//! assert!(bundled::has_machine(release, "pc-q35-5.2"));
//! let schema = bundled::schema(release, "pc-q35-5.2").ok_or("not bundled")??;
//! assert_eq!(schema.machine.as_deref(), Some("pc-q35-5.2"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Read;

use super::release::Release;
use super::{Problem, ProblemKind};
use crate::error::{Error, ErrorKind, Result};
use crate::schema::Schema;

/// Every machine type of every release known here: `release machine what`.
const MACHINES: &str = include_str!("machines.tsv");

macro_rules! bundle {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../schemas/", $name, ".json.gz")).as_slice(),
        )
    };
}

/// The bundled dumps, `qemuX.Y-FAMILY-M`: release X.Y running machine FAMILY-M.
const DUMPS: &[(&str, &[u8])] = &[
    bundle!("qemu10.0-pc-i440fx-10.0"),
    bundle!("qemu10.0-pc-i440fx-5.2"),
    bundle!("qemu10.0-pc-i440fx-7.2"),
    bundle!("qemu10.0-pc-q35-10.0"),
    bundle!("qemu10.0-pc-q35-5.2"),
    bundle!("qemu10.0-pc-q35-7.2"),
    bundle!("qemu11.1-pc-i440fx-10.0"),
    bundle!("qemu11.1-pc-i440fx-11.1"),
    bundle!("qemu11.1-pc-i440fx-5.2"),
    bundle!("qemu11.1-pc-i440fx-7.2"),
    bundle!("qemu11.1-pc-q35-10.0"),
    bundle!("qemu11.1-pc-q35-11.1"),
    bundle!("qemu11.1-pc-q35-5.2"),
    bundle!("qemu11.1-pc-q35-7.2"),
    bundle!("qemu5.2-pc-i440fx-5.2"),
    bundle!("qemu5.2-pc-q35-5.2"),
    bundle!("qemu7.2-pc-i440fx-5.2"),
    bundle!("qemu7.2-pc-i440fx-7.2"),
    bundle!("qemu7.2-pc-q35-5.2"),
    bundle!("qemu7.2-pc-q35-7.2"),
];

/// The largest dump this crate bundles, decompressed, with room to spare: a bound for the
/// decompressor, which never reads input from outside.
const DUMP_LIMIT: u64 = 16 << 20;

/// One machine type of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineType {
    /// Its name (`pc-q35-7.2`, `q35`, `microvm`).
    pub name: &'static str,
    /// The release's default machine type.
    pub default: bool,
    /// What the name stands for, when it is an alias (`q35` for `pc-q35-11.1`).
    pub alias_of: Option<&'static str>,
}

/// The machine types `release` has (x86: pc, q35 and microvm), or none when the release is
/// not known here.
pub fn machine_types(release: Release) -> Vec<MachineType> {
    MACHINES
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let mut cols = line.split('\t');
            let of = cols.next()?.parse::<Release>().ok()?;
            let name = cols.next()?;
            let what = cols.next()?;
            (of == release).then(|| MachineType {
                name,
                default: what == "default",
                alias_of: what.strip_prefix("alias-of:"),
            })
        })
        .collect()
}

/// Whether `release` has machine type `name` (an alias counts).
pub fn has_machine(release: Release, name: &str) -> bool {
    machine_types(release).iter().any(|m| m.name == name)
}

/// The machine type `name` stands for on `release`, as QEMU resolves `-machine name`: an
/// alias (`q35`, `pc`) gives the machine it names, a machine type itself.
pub fn resolve_machine(release: Release, name: &str) -> Option<&'static str> {
    let found = machine_types(release)
        .into_iter()
        .find(|m| m.name == name)?;
    Some(found.alias_of.unwrap_or(found.name))
}

/// The bundled `-dump-vmstate` of `release` running `machine` (resolved), when there is one.
pub fn schema(release: Release, machine: &str) -> Option<Result<Schema>> {
    let machine = resolve_machine(release, machine)?;
    let wanted = format!("qemu{release}-{machine}");
    let (_, packed) = DUMPS.iter().find(|(name, _)| *name == wanted)?;
    Some(inflate(packed).and_then(|json| Schema::from_dump(&json)))
}

/// The machine types of `release` whose dumps are bundled.
pub fn bundled_machines(release: Release) -> Vec<String> {
    let prefix = format!("qemu{release}-");
    DUMPS
        .iter()
        .filter_map(|(name, _)| name.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

/// The machine type a destination of `release` runs: `asked` (resolved, `q35` and `pc`
/// as QEMU resolves them), or without it the source's machine type when `release` has it,
/// else the release's newest of the source's family (its `q35` or `pc`). A machine type
/// the release does not have is the destination's first problem: QEMU would not start.
pub fn destination_machine(
    release: Release,
    asked: Option<&str>,
    source: Option<&str>,
) -> std::result::Result<&'static str, Box<Problem>> {
    if let Some(asked) = asked {
        return resolve_machine(release, asked).ok_or_else(|| {
            Box::new(
                Problem::new(
                    ProblemKind::MachineType,
                    "configuration",
                    format!("QEMU {release} has no machine {asked}: it would not start"),
                )
                .qemu(unsupported_machine(release, asked)),
            )
        });
    }
    if let Some(own) = source.and_then(|m| resolve_machine(release, m)) {
        return Ok(own);
    }
    let family = match source {
        Some(m) if m.contains("q35") => "q35",
        _ => "pc",
    };
    resolve_machine(release, family).ok_or_else(|| {
        Box::new(Problem::new(
            ProblemKind::MachineType,
            "configuration",
            format!("QEMU {release} has no {family} machine known here"),
        ))
    })
}

/// What QEMU `release` prints when it lacks machine type `name` (as measured on 5.2, 7.2,
/// 10.0 and 11.1: the wording changed twice).
fn unsupported_machine(release: Release, name: &str) -> String {
    if release >= Release::new(10, 0) {
        format!("unsupported machine type: \"{name}\"")
    } else if release >= Release::new(7, 2) {
        "unsupported machine type".to_owned()
    } else {
        format!("-machine {name}: unsupported machine type")
    }
}

fn inflate(packed: &[u8]) -> Result<Vec<u8>> {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(packed)
        .take(DUMP_LIMIT)
        .read_to_end(&mut json)
        .map_err(|e| {
            Error::new(
                ErrorKind::BadSchema {
                    reason: format!("a bundled dump does not decompress: {e}"),
                },
                0,
                "bundled dump",
            )
        })?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in crates/vmstate/schemas is bundled, and every bundled dump reads.
    #[test]
    fn every_dump_in_the_folder_is_bundled_and_reads() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let mut files: Vec<String> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut bundled: Vec<String> = DUMPS.iter().map(|(n, _)| format!("{n}.json.gz")).collect();
        bundled.sort();
        assert_eq!(files, bundled);
        for (name, packed) in DUMPS {
            let schema = Schema::from_dump(&inflate(packed).unwrap()).unwrap();
            let machine = name.split_once('-').unwrap().1;
            assert_eq!(schema.machine.as_deref(), Some(machine), "{name}");
        }
    }

    #[test]
    fn machine_types_resolve_as_qemu_resolves_them() {
        let (old, new) = (Release::new(5, 2), Release::new(11, 1));
        assert_eq!(resolve_machine(old, "pc"), Some("pc-i440fx-5.2"));
        assert_eq!(resolve_machine(new, "q35"), Some("pc-q35-11.1"));
        assert_eq!(resolve_machine(new, "pc-q35-7.2"), Some("pc-q35-7.2"));
        assert!(!has_machine(old, "pc-q35-7.2"));
        assert!(machine_types(new)
            .iter()
            .any(|m| m.default && m.name == "pc-i440fx-11.1"));
        assert!(machine_types(Release::new(8, 1)).is_empty());
        assert_eq!(
            destination_machine(new, None, Some("pc-q35-5.2")),
            Ok("pc-q35-5.2")
        );
        assert_eq!(
            destination_machine(old, None, Some("pc-q35-11.1")),
            Ok("pc-q35-5.2")
        );
        assert_eq!(
            destination_machine(old, None, Some("pc-i440fx-11.1")),
            Ok("pc-i440fx-5.2")
        );
        assert_eq!(
            destination_machine(new, Some("pc"), Some("pc-q35-5.2")),
            Ok("pc-i440fx-11.1")
        );
        let refused = destination_machine(old, Some("pc-q35-11.1"), None).unwrap_err();
        assert_eq!(refused.kind, ProblemKind::MachineType);
        assert!(refused.message.contains("would not start"), "{refused}");
        assert_eq!(
            bundled_machines(new),
            [
                "pc-i440fx-10.0",
                "pc-i440fx-11.1",
                "pc-i440fx-5.2",
                "pc-i440fx-7.2",
                "pc-q35-10.0",
                "pc-q35-11.1",
                "pc-q35-5.2",
                "pc-q35-7.2"
            ]
        );
    }
}
