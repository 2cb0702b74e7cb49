//! Reading a checkpoint archive: the members a restore needs, checked for
//! hostile names and links, and the facts the archive records about the
//! container and CRIU's dump.

use super::*;

/// What a checkpoint archive says about the checkpointed container.
/// Everything but the container name is optional: runtimes and versions
/// differ in what they record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckpointMetadata {
    /// The container's name in its pod (`app`), not the runtime's internal name.
    pub container_name: String,
    /// The runtime's container id (`config.dump` `id`).
    pub container_id: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    /// Engine that took the checkpoint: `CRI-O`, `containerd` or `Podman`.
    pub engine: Option<String>,
    /// OCI runtime (`config.dump` `runtime`, e.g. `runc`, `crun`, `io.containerd.runc.v2`).
    pub runtime: Option<String>,
    /// Image the user asked for (`config.dump` `rootfsImage`).
    pub rootfs_image: Option<String>,
    /// Image id or `name@digest` (`config.dump` `rootfsImageRef`).
    pub rootfs_image_ref: Option<String>,
    /// Image name (`config.dump` `rootfsImageName`).
    pub rootfs_image_name: Option<String>,
    pub created_at: Option<jiff::Timestamp>,
    pub checkpointed_at: Option<jiff::Timestamp>,
    /// From `dump.log`, when present.
    pub criu_version: Option<String>,
    /// Kernel release of the checkpointed host (`dump.log`).
    pub host_kernel: Option<String>,
    /// Machine of the checkpointed host as `uname -m` says it (`x86_64`).
    pub host_machine: Option<String>,
    /// CRIU's dump statistics (`stats-dump`), when present and readable.
    pub dump_stats: Option<CriuDumpStats>,
    /// Bytes of regular files under `checkpoint/`.
    pub checkpoint_bytes: u64,
    /// Size of `rootfs-diff.tar`, when present.
    pub rootfs_diff_bytes: Option<u64>,
    /// Size of the archive file.
    pub archive_bytes: u64,
}

/// CRIU's dump statistics (`stats-dump`, `StatsEntry.dump`). Times in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CriuDumpStats {
    pub freezing_time_us: u64,
    pub frozen_time_us: u64,
    pub memdump_time_us: u64,
    pub memwrite_time_us: u64,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
}

/// Reads the metadata of a checkpoint archive and checks its shape: members
/// `checkpoint/`, `config.dump` and `spec.dump` are present, no member path
/// is absolute or climbs out with `..`, no devices. Only the small metadata
/// members are read; contents of everything else are skipped with seeks.
pub(super) fn bad(archive: &str, message: impl Into<String>) -> Error {
    Error::CheckpointImage {
        archive: archive.to_string(),
        message: message.into(),
    }
}

/// Printable, bounded form of a member name from the archive.
pub(super) fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut short: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        short.push('…');
    }
    format!("{short:?}")
}

/// Checks a member path and returns it without `.` components and slashes
/// at either end (`./checkpoint/` → `checkpoint`).
pub(super) fn member_name(raw: &[u8]) -> Result<String, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("is an absolute path");
    }
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("climbs out of the archive with `..`"),
            _ => parts.push(std::str::from_utf8(part).map_err(|_| "is not UTF-8")?),
        }
    }
    Ok(parts.join("/"))
}

/// A symbolic link may only point inside the archive.
pub(super) fn check_symlink(name: &str, target: &[u8]) -> Result<(), &'static str> {
    if target.first() == Some(&b'/') {
        return Err("is a symbolic link to an absolute path");
    }
    let mut depth = name
        .split('/')
        .filter(|p| !p.is_empty())
        .count()
        .saturating_sub(1);
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("is a symbolic link that points out of the archive")?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

#[derive(Default)]
pub(super) struct Found {
    checkpoint_dir: bool,
    config_dump: Option<Vec<u8>>,
    spec_dump: Option<Vec<u8>>,
    status_dump: Option<Vec<u8>>,
    stats_dump: Option<Vec<u8>>,
    dump_log: Option<Vec<u8>>,
    checkpoint_bytes: u64,
    rootfs_diff_bytes: Option<u64>,
}

pub(super) fn scan_archive(path: &Path, label: &str) -> Result<CheckpointMetadata, Error> {
    let mut file = File::open(path).map_err(|e| Error::io("open checkpoint archive", path, e))?;
    let archive_bytes = file
        .metadata()
        .map_err(|e| Error::io("stat checkpoint archive", path, e))?
        .len();
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut file, &mut magic)
        .map_err(|e| Error::io("read checkpoint archive", path, e))?;
    match &magic[..got] {
        [0x1f, 0x8b, ..] => {
            return Err(bad(
                label,
                "is gzip-compressed; expected an uncompressed tar",
            ));
        }
        [0x28, 0xb5, 0x2f, 0xfd] => {
            return Err(bad(
                label,
                "is zstd-compressed; expected an uncompressed tar",
            ));
        }
        _ if archive_bytes < 512 => {
            return Err(bad(
                label,
                format!("is {archive_bytes} bytes long: not a tar archive"),
            ));
        }
        _ => {}
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("read checkpoint archive", path, e))?;

    let mut tar = tar::Archive::new(BufReader::with_capacity(64 << 10, file));
    let entries = tar
        .entries_with_seek()
        .map_err(|e| bad(label, format!("is not a readable tar: {e}")))?;
    let mut found = Found::default();
    let mut members = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            bad(
                label,
                format!("is not a readable tar after {members} members: {e}"),
            )
        })?;
        members += 1;
        let raw = entry.path_bytes().into_owned();
        let name =
            member_name(&raw).map_err(|why| bad(label, format!("member {} {why}", shown(&raw))))?;
        let kind = entry.header().entry_type();
        let member = |why: &str| bad(label, format!("member {} {why}", shown(&raw)));

        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(member(
                "is a device or fifo; a checkpoint archive holds only files, directories and links",
            ));
        }
        if kind.is_gnu_sparse() {
            return Err(member("is a sparse file, which is not supported"));
        }
        if kind.is_hard_link() || kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .ok_or_else(|| member("is a link without a target"))?;
            if kind.is_hard_link() {
                member_name(&target)
                    .map_err(|why| member(&format!("is a hard link whose target {why}")))?;
            } else {
                check_symlink(&name, &target).map_err(member)?;
            }
        }
        if !(kind.is_file()
            || kind.is_contiguous()
            || kind.is_dir()
            || kind.is_hard_link()
            || kind.is_symlink())
        {
            return Err(member(&format!(
                "has unsupported tar entry type {:?}",
                kind.as_byte() as char
            )));
        }

        let regular = kind.is_file() || kind.is_contiguous();
        if name == "checkpoint" || name.starts_with("checkpoint/") {
            if name == "checkpoint" && !kind.is_dir() {
                return Err(member("must be a directory (CRIU's images)"));
            }
            found.checkpoint_dir = true;
            if regular {
                found.checkpoint_bytes += entry.size();
            }
            continue;
        }
        let slot = match name.as_str() {
            "config.dump" => &mut found.config_dump,
            "spec.dump" => &mut found.spec_dump,
            "status.dump" => &mut found.status_dump,
            "stats-dump" => &mut found.stats_dump,
            "dump.log" => &mut found.dump_log,
            "rootfs-diff.tar" => {
                if regular {
                    found.rootfs_diff_bytes = Some(entry.size());
                }
                continue;
            }
            _ => continue,
        };
        if !regular {
            return Err(member("must be a regular file"));
        }
        if slot.is_some() {
            return Err(member("appears twice"));
        }
        let limit = if name == "dump.log" {
            LOG_HEAD
        } else {
            METADATA_LIMIT
        };
        if name != "dump.log" && entry.size() > limit {
            return Err(member(&format!(
                "is {} bytes; metadata members are at most {limit}",
                entry.size()
            )));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| member(&format!("cannot be read: {e}")))?;
        *slot = Some(bytes);
    }

    if members == 0 {
        return Err(bad(label, "is an empty tar: not a checkpoint archive"));
    }
    if !found.checkpoint_dir {
        return Err(bad(
            label,
            "has no member \"checkpoint/\" (CRIU's images): not a container checkpoint",
        ));
    }
    let config_dump = found.config_dump.as_deref().ok_or_else(|| {
        bad(
            label,
            "has no member \"config.dump\": not a container checkpoint",
        )
    })?;
    let spec_dump = found.spec_dump.as_deref().ok_or_else(|| {
        bad(
            label,
            "has no member \"spec.dump\": not a container checkpoint",
        )
    })?;
    let config: Value = serde_json::from_slice(config_dump).map_err(|e| {
        bad(
            label,
            format!("member \"config.dump\" is not valid JSON: {e}"),
        )
    })?;
    let spec: Value = serde_json::from_slice(spec_dump).map_err(|e| {
        bad(
            label,
            format!("member \"spec.dump\" is not valid JSON: {e}"),
        )
    })?;
    if !config.is_object() {
        return Err(bad(label, "member \"config.dump\" is not a JSON object"));
    }
    if !spec.is_object() {
        return Err(bad(label, "member \"spec.dump\" is not a JSON object"));
    }
    // containerd's CRI status; informative only, so a broken one is ignored.
    let status: Value = found
        .status_dump
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null);

    let mut meta = describe(&config, &spec, &status);
    if meta.container_name.is_empty() {
        return Err(bad(
            label,
            "names no container: spec.dump has no io.kubernetes.container.name or \
             io.kubernetes.cri.container-name annotation and config.dump no name",
        ));
    }
    if let Some(log) = found.dump_log.as_deref() {
        let (version, kernel, machine) = parse_dump_log(log);
        meta.criu_version = version;
        meta.host_kernel = kernel;
        meta.host_machine = machine;
    }
    meta.dump_stats = found.stats_dump.as_deref().and_then(parse_stats_dump);
    meta.checkpoint_bytes = found.checkpoint_bytes;
    meta.rootfs_diff_bytes = found.rootfs_diff_bytes;
    meta.archive_bytes = archive_bytes;
    Ok(meta)
}

pub(super) fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

pub(super) fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Go's `time.Time` as JSON; its zero value (year 1) means unset.
pub(super) fn go_time(value: &Value, key: &str) -> Option<jiff::Timestamp> {
    let parsed: jiff::Timestamp = text(value, key)?.parse().ok()?;
    (parsed.as_second() > 0).then_some(parsed)
}

pub(super) fn describe(config: &Value, spec: &Value, status: &Value) -> CheckpointMetadata {
    let annotation = |key: &str| {
        spec.get("annotations")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let status_label = |key: &str| {
        status
            .get("labels")
            .and_then(|a| a.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    // CRI-O keeps the CRI container metadata as JSON in an annotation.
    let crio_metadata_name = annotation("io.kubernetes.cri-o.Metadata")
        .and_then(|m| serde_json::from_str::<Value>(&m).ok())
        .and_then(|m| text(&m, "/name").map(str::to_string));

    let container_name = annotation("io.kubernetes.container.name")
        .or_else(|| annotation("io.kubernetes.cri.container-name"))
        .or(crio_metadata_name)
        .or_else(|| text(status, "/metadata/name").map(str::to_string))
        .or_else(|| status_label("io.kubernetes.container.name"))
        .or_else(|| text(config, "/name").map(str::to_string))
        .unwrap_or_default();
    let engine = match annotation("io.container.manager").as_deref() {
        Some("cri-o") => Some("CRI-O".to_string()),
        Some("libpod") => Some("Podman".to_string()),
        Some(other) => Some(other.to_string()),
        None if annotation("io.kubernetes.cri.container-name").is_some()
            || annotation("io.kubernetes.cri.sandbox-id").is_some() =>
        {
            Some("containerd".to_string())
        }
        None => None,
    };
    CheckpointMetadata {
        container_name,
        container_id: text(config, "/id").map(str::to_string),
        pod_name: annotation("io.kubernetes.pod.name")
            .or_else(|| annotation("io.kubernetes.cri.sandbox-name"))
            .or_else(|| status_label("io.kubernetes.pod.name")),
        pod_namespace: annotation("io.kubernetes.pod.namespace")
            .or_else(|| annotation("io.kubernetes.cri.sandbox-namespace"))
            .or_else(|| status_label("io.kubernetes.pod.namespace")),
        pod_uid: annotation("io.kubernetes.pod.uid")
            .or_else(|| annotation("io.kubernetes.cri.sandbox-uid"))
            .or_else(|| status_label("io.kubernetes.pod.uid")),
        engine,
        runtime: text(config, "/runtime").map(str::to_string),
        rootfs_image: text(config, "/rootfsImage").map(str::to_string),
        rootfs_image_ref: text(config, "/rootfsImageRef").map(str::to_string),
        rootfs_image_name: text(config, "/rootfsImageName").map(str::to_string),
        created_at: go_time(config, "/createdTime"),
        checkpointed_at: go_time(config, "/checkpointedTime"),
        ..CheckpointMetadata::default()
    }
}

/// CRIU starts every log with `Version: <v> (gitid <id>)` and
/// `Running on <node> <sysname> <release> <version…> <machine>`.
pub(super) fn parse_dump_log(log: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(log);
    let (mut version, mut kernel, mut machine) = (None, None, None);
    for line in text.lines().take(200) {
        if version.is_none()
            && let Some((_, rest)) = line.split_once("Version: ")
        {
            let v = rest.split(" (gitid").next().unwrap_or(rest).trim();
            if !v.is_empty() {
                version = Some(v.to_string());
            }
        }
        if kernel.is_none()
            && let Some((_, rest)) = line.split_once("Running on ")
        {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.len() >= 4 {
                kernel = words.get(2).map(|s| s.to_string());
                machine = words.last().map(|s| s.to_string());
            }
        }
        if version.is_some() && kernel.is_some() {
            break;
        }
    }
    (version, kernel, machine)
}

/// `stats-dump`: u32 LE image magic 0x55105940, u32 LE stats magic
/// 0x57093306, u32 LE payload size, protobuf `StatsEntry` whose field 1 is
/// `DumpStatsEntry` (fields 1–7: freezing, frozen, memdump, memwrite time
/// in µs; pages scanned, skipped because in the parent, written).
pub(super) fn parse_stats_dump(bytes: &[u8]) -> Option<CriuDumpStats> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    if word(0)? != 0x5510_5940 || word(4)? != 0x5709_3306 {
        return None;
    }
    let size = usize::try_from(word(8)?).ok()?;
    let payload = bytes.get(12..12usize.checked_add(size)?)?;
    let dump = proto_fields(payload)?
        .into_iter()
        .find_map(|(field, value)| match (field, value) {
            (1, ProtoValue::Bytes(b)) => Some(b),
            _ => None,
        })?;
    let mut stats = CriuDumpStats::default();
    for (field, value) in proto_fields(dump)? {
        let ProtoValue::Varint(v) = value else {
            continue;
        };
        match field {
            1 => stats.freezing_time_us = v,
            2 => stats.frozen_time_us = v,
            3 => stats.memdump_time_us = v,
            4 => stats.memwrite_time_us = v,
            5 => stats.pages_scanned = v,
            6 => stats.pages_skipped_parent = v,
            7 => stats.pages_written = v,
            _ => {}
        }
    }
    Some(stats)
}

pub(super) enum ProtoValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

pub(super) fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

pub(super) fn proto_fields(bytes: &[u8]) -> Option<Vec<(u64, ProtoValue<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let value = match key & 7 {
            0 => ProtoValue::Varint(varint(bytes, &mut at)?),
            1 => {
                at = at.checked_add(8).filter(|&end| end <= bytes.len())?;
                ProtoValue::Fixed
            }
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|&end| end <= bytes.len())?;
                let value = ProtoValue::Bytes(&bytes[at..end]);
                at = end;
                value
            }
            5 => {
                at = at.checked_add(4).filter(|&end| end <= bytes.len())?;
                ProtoValue::Fixed
            }
            _ => return None,
        };
        out.push((key >> 3, value));
    }
    Some(out)
}
