//! Every stream of the shared corpus (extended tier: `CI=true`, needs `../shared/corpus`).
//!
//! Each stream must read, agree with its own description (FULL sections, versions, page
//! size), agree with QEMU's analyze-migration.py output (`meta/NAME.peer-state.json.gz`)
//! for RAM block sizes and every device's values, write back byte for byte, and fail cleanly
//! when cut short.

mod stream_checks;
mod support;

use stream_checks::{
    check_against_peer_state, check_cut, check_stream, cut_points, read_json_gz, read_stream_file,
};
use vmstate::stream::{self, SectionKind};

#[test]
fn every_corpus_stream_reads_agrees_and_writes_back() {
    let Some(shared) = support::shared_dir("every_corpus_stream_reads_agrees_and_writes_back")
    else {
        return;
    };
    let corpus = shared.join("corpus");
    let streams = support::corpus_streams(&corpus);
    assert_eq!(streams.len(), 16, "the corpus has 16 streams");
    let mut sections_compared = 0;
    for (name, path) in &streams {
        let data = read_stream_file(path);
        let parsed = check_stream(name, &data);
        let peer = read_json_gz(&corpus.join(format!("meta/{name}.peer-state.json.gz")));
        sections_compared += check_against_peer_state(name, &parsed, &peer);

        // What the MANIFEST says about the stream's framing.
        let has_switchover = parsed
            .commands()
            .iter()
            .any(|c| c.name == "SWITCHOVER_START");
        assert_eq!(
            has_switchover,
            name.starts_with("qemu10.0") && !name.contains("2.6-legacy"),
            "{name}: SWITCHOVER_START"
        );
        assert_eq!(
            parsed.footers,
            Some(!name.contains("nofooter")),
            "{name}: footers"
        );
        assert_eq!(
            parsed.configuration().is_some(),
            !name.contains("noconfig"),
            "{name}: configuration"
        );
        assert_eq!(
            parsed.sections().iter().any(|s| s.idstr == "globalstate"),
            !name.contains("noglobalstate"),
            "{name}: globalstate"
        );
        let ram: Vec<_> = parsed
            .sections()
            .into_iter()
            .filter(|s| s.idstr == "ram")
            .map(|s| s.kind)
            .collect();
        assert_eq!(ram.first(), Some(&SectionKind::Start), "{name}");
        assert_eq!(ram.last(), Some(&SectionKind::End), "{name}");
    }
    eprintln!(
        "corpus: {} streams, {sections_compared} sections compared with analyze-migration.py",
        streams.len()
    );
}

#[test]
fn every_corpus_stream_cut_short_fails_cleanly() {
    let Some(shared) = support::shared_dir("every_corpus_stream_cut_short_fails_cleanly") else {
        return;
    };
    for (name, path) in support::corpus_streams(&shared.join("corpus")) {
        let data = read_stream_file(&path);
        let parsed = stream::read(&data).unwrap();
        // Booted streams are 18 MB: fewer evenly spread cuts there, all boundaries anyway.
        let extra = if data.len() > 4 << 20 { 30 } else { 200 };
        for cut in cut_points(&parsed, data.len(), extra, usize::MAX) {
            check_cut(&name, &data, parsed.eof_offset, cut);
        }
    }
}
