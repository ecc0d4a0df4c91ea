use super::locate::{line_of, line_of_path};

#[test]
fn lines_of_keys_tables_and_array_items() {
    let text = "[agent]\ndevice_id = \"x\"\n\n[engine]\nthreads = 2\n\n[[source]]\nkind = \"a\"\n\n[[source]]\nkind = \"b\"\nmodel = \"m\"\n";
    assert_eq!(line_of(text, 0), 1);
    assert_eq!(line_of_path(text, "agent.device_id"), Some(2));
    assert_eq!(line_of_path(text, "engine.threads"), Some(5));
    assert_eq!(line_of_path(text, "engine.queue"), Some(4), "a missing key points at its table");
    assert_eq!(line_of_path(text, "source.1.model"), Some(12));
    assert_eq!(line_of_path(text, "nothing"), None);
}

#[test]
fn the_model_memory_limit_is_checked_and_reaches_the_engine() {
    use super::{Config, Overrides};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let write = |text: &str| {
        std::fs::write(&path, format!("[agent]\ndevice_id = \"d\"\nstate_dir = \"s\"\n{text}")).unwrap()
    };

    write("");
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    assert_eq!(c.engine.model_limits.max_bytes, 256 << 20, "the default");

    write("\n[engine]\nmax_model_memory_mb = 64\n");
    let c = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap();
    assert_eq!(c.engine.model_limits.max_bytes, 64 << 20);
    let env = [("EDGE_AGENT_ENGINE_MAX_MODEL_MEMORY_MB".to_string(), "2048".to_string())];
    let c = Config::load_with_env(&path, &Overrides::default(), &env).unwrap();
    assert_eq!(c.engine.model_limits.max_bytes, 2048 << 20, "the environment overrides the file");

    for bad in ["0", "1048577"] {
        write(&format!("\n[engine]\nmax_model_memory_mb = {bad}\n"));
        let err = Config::load_with_env(&path, &Overrides::default(), &[]).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "agent.toml:6: engine.max_model_memory_mb: {bad} is out of range; use 1 to 1048576"
            )),
            "{err}"
        );
    }
}
