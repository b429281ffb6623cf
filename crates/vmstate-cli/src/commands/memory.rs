//! Guest memory for the commands that need it (`check`, `convert --ram=rings`).

use vmstate::devices::VirtioSection;
use vmstate::memory::{self, GuestRam};

use super::dump::LoadedStream;
use crate::outcome::Failure;

/// Rebuilds guest RAM from `loaded`, releasing the mapping behind the pass.
///
/// `Ok(Err(reason))` when no map can be derived and none was given: checks that need memory
/// then say they could not be made. An explicit map that does not fit the stream, or a RAM
/// section that cannot be read, is a failure.
pub fn guest_ram<'s>(
    loaded: &'s LoadedStream,
    devices: &[VirtioSection],
    explicit_map: Option<&str>,
    shown: &str,
) -> Result<Result<GuestRam<'s>, String>, Failure> {
    let map = match memory::map_for(&loaded.stream, devices, explicit_map) {
        Ok(map) => map,
        Err(e) if explicit_map.is_some() => {
            return Err(Failure::unreadable(format!("{shown}: {e}")))
        }
        Err(e) => {
            return Ok(Err(match e.kind() {
                vmstate::ErrorKind::BadRamMap { reason } => {
                    format!("{reason} (give it with --ram-map BLOCK@GPA)")
                }
                _ => e.to_string(),
            }))
        }
    };
    loaded.bytes.rewind();
    let ram = GuestRam::from_stream(&loaded.stream, &loaded.bytes, map, &mut |offset| {
        loaded.bytes.release_before(offset)
    })
    .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
    loaded.bytes.release_all();
    Ok(Ok(ram))
}
