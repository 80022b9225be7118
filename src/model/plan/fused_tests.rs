//! The fused kernels against the eager layers they replace.
use super::*;

fn nhwc(x: &Tensor) -> Tensor {
    MemoryFormat::Nhwc.apply(x)
}

fn reference(x: &Tensor, w: &Tensor, b: &Tensor, g: Geometry) -> Tensor {
    x.conv2d(w, Some(b), [g.stride; 2], g.padding, [1, 1], g.groups)
}

/// Whether this libtorch has the fused kernels. The x86-64 PyTorch wheels have oneDNN, so
/// there a test cannot pass by skipping: it fails instead. Elsewhere it says why it returns.
fn kernels_here() -> bool {
    if available() {
        return true;
    }
    if cfg!(target_arch = "x86_64") {
        panic!("no fused kernels found");
    }
    crate::test_skip::skip(
        "no fused kernels in this libtorch (built without oneDNN, as off x86-64)",
        "run on x86-64, where PyTorch's wheels ship oneDNN",
    );
    false
}

/// A `k`×`k` convolution's geometry with PyTorch's even padding.
fn geometry(k: i64, stride: i64, groups: i64) -> Geometry {
    Geometry {
        stride,
        padding: [(k - 1) / 2; 2],
        groups,
    }
}

/// Each activation and the residual add equal the eager ops, in both memory formats,
/// grouped and depthwise.
#[test]
fn fused_equals_eager() {
    if !kernels_here() {
        return;
    }
    tch::manual_seed(0);
    let _guard = tch::no_grad_guard();
    for (c_in, c_out, k, groups, stride) in [(8, 16, 3, 1, 1), (16, 16, 3, 16, 2), (16, 8, 1, 1, 1)]
    {
        let g = geometry(k, stride, groups);
        let w = Tensor::randn([c_out, c_in / groups, k, k], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([c_out], (Kind::Float, Device::Cpu));
        for nhwc_input in [false, true] {
            let mut x = Tensor::randn([4, c_in, 12, 12], (Kind::Float, Device::Cpu)) * 3;
            let mut w = w.shallow_clone();
            if nhwc_input {
                x = nhwc(&x);
                w = nhwc(&w);
            }
            let eager = reference(&x, &w, &b, g);
            for (post, want) in [
                (Post::None, eager.shallow_clone()),
                (Post::Relu, eager.relu()),
                (Post::Clamp(0.0, 6.0), eager.clamp(0.0, 6.0)),
                (Post::Silu, eager.silu()),
                (Post::Hardswish, eager.hardswish()),
            ] {
                let got = conv(&x, &w, &b, g, post).expect("fused");
                let d = f64::try_from((got - &want).abs().max()).unwrap();
                assert!(d < 1e-4, "{post:?} nhwc={nhwc_input} groups={groups}: {d}");
            }
            if groups == 1 {
                let res = Tensor::randn_like(&eager);
                let res = if nhwc_input { nhwc(&res) } else { res };
                for relu in [false, true] {
                    let want = if relu {
                        (&eager + &res).relu()
                    } else {
                        &eager + &res
                    };
                    // The kernel may write into its residual: each call gets its own.
                    let given = res.copy();
                    match conv_add(&x, &given, &w, &b, g, relu) {
                        Some(got) => {
                            assert_eq!(
                                got.data_ptr(),
                                given.data_ptr(),
                                "a channels-last residual is summed into in place"
                            );
                            let d = f64::try_from((got - &want).abs().max()).unwrap();
                            assert!(d < 1e-4, "add relu={relu} nhwc={nhwc_input}: {d}");
                        }
                        None => assert!(!nhwc_input, "channels-last ungrouped must fuse"),
                    }
                }
            }
        }
    }
}

/// A weight packed for one input size gives the plain weight's results on that size and on
/// others (a last, smaller batch; another image size), with an activation and a residual.
#[test]
fn packed_weights_equal_plain_ones() {
    if !kernels_here() {
        return;
    }
    tch::manual_seed(0);
    let _guard = tch::no_grad_guard();
    for (c_in, c_out, k, groups, stride) in
        [(8, 16, 3, 1, 1), (16, 16, 3, 16, 2), (16, 16, 1, 1, 1)]
    {
        let g = geometry(k, stride, groups);
        let w = nhwc(&Tensor::randn(
            [c_out, c_in / groups, k, k],
            (Kind::Float, Device::Cpu),
        ));
        let b = Tensor::randn([c_out], (Kind::Float, Device::Cpu));
        let packed = pack(&w, g, &[4, c_in, 12, 12]).expect("packed");
        assert!(packed.is_mkldnn());
        for (n, hw) in [(4, 12), (3, 12), (2, 9)] {
            let x = nhwc(&Tensor::randn(
                [n, c_in, hw, hw],
                (Kind::Float, Device::Cpu),
            ));
            let eager = reference(&x, &w, &b, g);
            let got = conv(&x, &packed, &b, g, Post::Clamp(0.0, 6.0)).expect("fused");
            let d = f64::try_from((&got - eager.clamp(0.0, 6.0)).abs().max()).unwrap();
            assert!(d < 1e-4, "packed, groups={groups}, {n}x{hw}: {d}");
            assert!(
                MemoryFormat::Nhwc.holds(&got),
                "the output stays channels-last"
            );
            if groups == 1 && stride == 1 && c_in == c_out {
                let res = nhwc(&Tensor::randn_like(&eager));
                let want = (&eager + &res).relu();
                let got = conv_add(&x, &res, &packed, &b, g, true).expect("fused add");
                let d = f64::try_from((got - want).abs().max()).unwrap();
                assert!(d < 1e-4, "packed add, {n}x{hw}: {d}");
            }
        }
    }
}

/// A residual that is also the convolution's input is not summed into in place (the kernel
/// would read what it has already overwritten): the result is right and the input unchanged.
#[test]
fn residual_that_is_the_input_stays_intact() {
    if !kernels_here() {
        return;
    }
    let _guard = tch::no_grad_guard();
    tch::manual_seed(1);
    let x = nhwc(&Tensor::randn([2, 8, 10, 10], (Kind::Float, Device::Cpu)));
    let before = x.copy();
    let w = nhwc(&Tensor::randn([8, 8, 3, 3], (Kind::Float, Device::Cpu)));
    let b = Tensor::randn([8], (Kind::Float, Device::Cpu));
    let g = geometry(3, 1, 1);
    let want = (reference(&x, &w, &b, g) + &x).relu();
    let got = conv_add(&x, &x, &w, &b, g, true).expect("fused add");
    assert!(f64::try_from((got - want).abs().max()).unwrap() < 1e-4);
    assert!(x.equal(&before), "the input is untouched");
}

/// A residual block whose output is one pixel is left to the caller (oneDNN refuses it), and
/// nothing is broken by it.
#[test]
fn one_pixel_residual_is_left_unfused() {
    let _guard = tch::no_grad_guard();
    let x = nhwc(&Tensor::randn([2, 8, 1, 1], (Kind::Float, Device::Cpu)));
    let w = nhwc(&Tensor::randn([8, 8, 3, 3], (Kind::Float, Device::Cpu)));
    let b = Tensor::zeros([8], (Kind::Float, Device::Cpu));
    let g = geometry(3, 1, 1);
    assert!(conv_add(&x, &x, &w, &b, g, true).is_none());
    if available() {
        assert!(conv(&x, &w, &b, g, Post::Relu).is_some(), "fusion still on");
    }
}

/// A tensor that needs its gradient is never given to a kernel that has none.
#[test]
fn refuses_autograd() {
    let x = Tensor::randn([1, 4, 6, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let w = Tensor::randn([4, 4, 3, 3], (Kind::Float, Device::Cpu));
    let b = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    let g = geometry(3, 1, 1);
    assert!(conv(&x, &w, &b, g, Post::Relu).is_none());
}
