//! Material for contract tests and benchmarks against a real VMM: a guest
//! "kernel" that Firecracker's loader accepts and that answers nothing.

/// Load and entry address of [`spin_kernel`] (above Firecracker's 1 MiB floor).
pub const SPIN_KERNEL_BASE: u64 = 0x100_0000;

/// A minimal x86-64 ELF executable whose only code is `jmp $`: a guest
/// that boots and never answers Ctrl-Alt-Del, so stops must fall back to
/// signals.
pub fn spin_kernel() -> Vec<u8> {
    const HEADER: u64 = 64;
    const PHDR: u64 = 56;
    let code: &[u8] = &[0xeb, 0xfe];
    let entry = SPIN_KERNEL_BASE + HEADER + PHDR;
    let file_size = HEADER + PHDR + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&entry.to_le_bytes());
    elf.extend_from_slice(&HEADER.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&SPIN_KERNEL_BASE.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&SPIN_KERNEL_BASE.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&file_size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&file_size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(code);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_kernel_is_a_well_formed_elf() {
        let elf = spin_kernel();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf.len(), 64 + 56 + 2);
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        assert_eq!(entry, SPIN_KERNEL_BASE + 120);
        assert_eq!(&elf[120..], &[0xeb, 0xfe]);
    }
}
