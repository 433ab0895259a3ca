fn main() -> std::process::ExitCode {
    banger_daemon::main_entry()
}
