//! Compiles `proto/*.proto` into Rust with prost-build, parsing the schema with
//! protox so that no `protoc` binary is needed.

fn main() {
    let proto_dir = "../proto";
    let files = ["common.proto", "control.proto", "data.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={proto_dir}/{file}");
    }
    let descriptors = protox::compile(files, [proto_dir]).expect("proto/ schema must parse");
    prost_build::Config::new()
        // `bytes` fields decode as `bytes::Bytes`, sliced from the input without a copy.
        .bytes(["."])
        .compile_fds(descriptors)
        .expect("prost code generation");
}
