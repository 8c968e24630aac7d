fn main() {
    diffuse_build::link_libtorch();
    diffuse_build::compile_libtorch_cpp("diffuse_tensor_shim", &["csrc/shim.cpp", "csrc/dist.cpp"]);
}
