//! With the `pocketsphinx` feature: finds libpocketsphinx with pkg-config and passes its model
//! folder to the code; stops the build with the command that installs it when it is missing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "pocketsphinx")]
    pocketsphinx();
}

#[cfg(feature = "pocketsphinx")]
fn pocketsphinx() {
    if let Err(error) = pkg_config::Config::new().probe("pocketsphinx") {
        panic!(
            "the pocketsphinx feature needs libpocketsphinx: install it with \
             `sudo apt-get install -y pkg-config libpocketsphinx-dev pocketsphinx-en-us` \
             (pkg-config said: {error})"
        );
    }
    let model_dir = pkg_config::get_variable("pocketsphinx", "modeldir")
        .unwrap_or_else(|_| "/usr/share/pocketsphinx/model".to_string());
    println!("cargo:rustc-env=POCKETSPHINX_MODELDIR={model_dir}");
}
