//! What a Lambda artifact needs of the machine it runs on, read from its ELF
//! file: the architecture it was built for and the glibc versions it binds
//! to. Lambda's `provided.al2023` runtime has glibc 2.34; a binary that needs
//! a later symbol version starts on a developer's machine and fails on
//! Lambda before `main`.

use object::elf;
use object::read::elf::{ElfFile64, FileHeader};

/// glibc of Lambda's `provided.al2023` runtime (Amazon Linux 2023).
pub const AL2023_GLIBC: GlibcVersion = GlibcVersion(2, 34);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(pub u32, pub u32);

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GLIBC_{}.{}", self.0, self.1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    X86_64,
    Aarch64,
    Other(u16),
}

pub struct Artifact {
    pub machine: Machine,
    /// Every `GLIBC_x.y` the binary's symbols are bound to, ascending.
    pub glibc_needed: Vec<GlibcVersion>,
}

impl Artifact {
    pub fn read(path: &str) -> Artifact {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let file = ElfFile64::<object::Endianness>::parse(&*data)
            .unwrap_or_else(|e| panic!("{path} is not a 64-bit ELF file: {e}"));
        let endian = file.endian();
        let machine = match file.elf_header().e_machine(endian) {
            elf::EM_X86_64 => Machine::X86_64,
            elf::EM_AARCH64 => Machine::Aarch64,
            other => Machine::Other(other),
        };
        let sections = file.elf_section_table();
        let mut glibc_needed = Vec::new();
        let needs = sections
            .gnu_verneed(endian, &*data)
            .unwrap_or_else(|e| panic!("{path}: version needs: {e}"));
        if let Some((mut needs, strings_index)) = needs {
            let strings = sections
                .strings(endian, &*data, strings_index)
                .unwrap_or_else(|e| panic!("{path}: version strings: {e}"));
            while let Some((_, mut versions)) = needs.next().expect("well-formed verneed") {
                while let Some(version) = versions.next().expect("well-formed vernaux") {
                    let name = version.name(endian, strings).expect("version name");
                    if let Some(parsed) = parse_glibc(name) {
                        glibc_needed.push(parsed);
                    }
                }
            }
        }
        glibc_needed.sort();
        glibc_needed.dedup();
        Artifact {
            machine,
            glibc_needed,
        }
    }

    pub fn newest_glibc(&self) -> Option<GlibcVersion> {
        self.glibc_needed.last().copied()
    }
}

fn parse_glibc(name: &[u8]) -> Option<GlibcVersion> {
    let version = std::str::from_utf8(name).ok()?.strip_prefix("GLIBC_")?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(GlibcVersion(major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_parse_and_order_numerically() {
        assert_eq!(parse_glibc(b"GLIBC_2.34"), Some(GlibcVersion(2, 34)));
        assert_eq!(parse_glibc(b"GLIBC_2.2.5"), Some(GlibcVersion(2, 2)));
        assert_eq!(parse_glibc(b"GLIBC_PRIVATE"), None);
        assert_eq!(parse_glibc(b"GCC_3.0"), None);
        assert!(GlibcVersion(2, 9) < GlibcVersion(2, 34));
    }

    #[test]
    fn the_test_binary_itself_reads_as_this_machine_built_it() {
        let me = std::env::current_exe().expect("own path");
        let artifact = Artifact::read(me.to_str().expect("UTF-8 path"));
        let expected = if cfg!(target_arch = "x86_64") {
            Machine::X86_64
        } else {
            Machine::Aarch64
        };
        assert_eq!(artifact.machine, expected);
        assert!(
            artifact.newest_glibc().is_some(),
            "a glibc binary binds to versioned symbols"
        );
    }
}
