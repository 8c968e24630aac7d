fn main() {
    diffuse_build::link_libtorch();
}
