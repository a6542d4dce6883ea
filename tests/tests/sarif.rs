//! `audit-image --format sarif` validates against the SARIF 2.1.0 JSON schema, checked by a
//! PyPI JSON-schema validator (`jsonschema`, pinned in tests/python-requirements.txt). The
//! schema is the one the `serde-sarif` crate ships (the OASIS file, `src/schema.json`), found
//! through `cargo metadata`; the output also deserializes into serde-sarif's typed model.

use std::{path::PathBuf, process::Command};

use credwatch_tests::{helper_binary, python};

fn sarif_schema() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "serde-sarif")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("serde-sarif in the dependency graph");
    let schema = PathBuf::from(manifest).with_file_name("src/schema.json");
    assert!(schema.is_file(), "{}", schema.display());
    schema
}

#[test]
fn sarif_output_validates_against_the_sarif_2_1_0_schema() {
    let work = std::env::temp_dir().join(format!("credwatch-sarif-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let image = work.join("image");
    // A small generated image with one planted credential.
    let status = Command::new(helper_binary("credwatch-mkimage"))
        .arg(&image)
        .arg("2")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(std::env::var("CREDWATCH_BIN").unwrap())
        .args(["audit-image", "--format", "sarif", "--policies"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sarif = work.join("findings.sarif");
    std::fs::write(&sarif, &out.stdout).unwrap();

    let typed: serde_sarif::sarif::Sarif = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(typed.runs[0].results.as_ref().map(Vec::len), Some(1));

    let check = "import json, sys, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 doc = json.load(open(sys.argv[2]))\n\
                 jsonschema.validators.validator_for(schema)(schema).validate(doc)\n\
                 print('valid')\n";
    let validate = || {
        Command::new(python::env().python())
            .args(["-c", check])
            .arg(sarif_schema())
            .arg(&sarif)
            .output()
            .unwrap()
    };
    let valid = validate();
    assert!(
        valid.status.success(),
        "{}{}",
        String::from_utf8_lossy(&valid.stdout),
        String::from_utf8_lossy(&valid.stderr)
    );
    // The check can fail: the same document without its required `version` does not pass.
    let mut broken: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    broken.as_object_mut().unwrap().remove("version");
    std::fs::write(&sarif, broken.to_string()).unwrap();
    let invalid = validate();
    assert!(
        !invalid.status.success(),
        "a document without version passed"
    );
    let _ = std::fs::remove_dir_all(&work);
}
