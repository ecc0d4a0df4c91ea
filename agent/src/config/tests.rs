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
