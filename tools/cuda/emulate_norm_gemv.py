"""CPU emulation of the index arithmetic of `norm_gemv` (model/kernels/fused.cu, the decode step's
RMSNorm folded into the next matmul; GRIFFON_NORM_GEMV=1): blocks, warps, lanes, the 16-byte
chunks of W and the float4 reads of the normalized rows, the grid-stride loop over outputs (N past
one grid's 131072), the plain product without a norm, against a direct f64 reference; every
output written exactly once. f64
throughout (no bf16 rounding). Session 10: errors <= 4.3e-16. The card's own check is
`griffon selfcheck --device cuda` ("RMSNorm folded into the matmul").

    python3 tools/cuda/emulate_norm_gemv.py
"""
import math, random
def run(rows, K, N, mode, seed):
    random.seed(seed)
    R=lambda n:[random.uniform(-1,1) for _ in range(n)]
    x=[R(K) for _ in range(rows)]; res=[R(K) for _ in range(rows)]; s1=R(K); s2=R(K); w=[R(K) for _ in range(N)]
    eps=1e-6
    # reference
    def rms(v,s): r=1/math.sqrt(sum(a*a for a in v)/K+eps); return [a*r*si for a,si in zip(v,s)]
    H=[]
    for r in range(rows):
        if mode in (0,3): h=x[r]
        elif mode==1: h=[a+b for a,b in zip(res[r], rms(x[r],s1))]
        else: h=[a+b for a,b in zip(res[r], x[r])]
        H.append(h)
    A=[rms(h,s2) if mode!=3 else h for h in H]
    Y=[[sum(a*b for a,b in zip(A[r],w[n])) for n in range(N)] for r in range(rows)]
    # emulation: blockDim 256 -> nw 8, OPW 4, grid = min(ceil(N/32), 4096)
    nw, OPW = 8, 4
    grid=min(-(-N//(nw*OPW)), 4096)
    y=[[None]*N for _ in range(rows)]
    a=[0.0]*(rows*K)  # shared; identical in every block
    for r in range(rows):
        for i in range(K): a[r*K+i]=H[r][i]
        if mode!=3:  # s2 == null: no pre-norm
            q=sum(a[r*K+i]**2 for i in range(K)); rstd=1/math.sqrt(q/K+eps)
            for i in range(K): a[r*K+i]=a[r*K+i]*rstd*s2[i]
    k8=K//8
    for bx in range(grid):
        for warp in range(nw):
            n0=(bx*nw+warp)*OPW
            while n0<N:
                acc=[[[0.0]*4 for _ in range(OPW)] for _ in range(32)]
                for lane in range(32):
                    c=lane
                    while c<k8:
                        wv=[[w[n0+o][8*c+j] for j in range(8)] if n0+o<N else [0.0]*8 for o in range(OPW)]
                        for r in range(4):
                            if r>=rows: break
                            # unpack8(a_shared[(r*K)/8 + c]): eight T values
                            base=((r*K)//8+c)*8
                            av=[a[base+j] for j in range(8)]
                            for o in range(OPW):
                                for j in range(8): acc[lane][o][r]+=av[j]*wv[o][j]
                        c+=32
                for o in range(OPW):
                    for r in range(4):
                        v=sum(acc[l][o][r] for l in range(32))
                        n=n0+o
                        if r<rows and n<N:
                            assert y[r][n] is None, "written twice"
                            y[r][n]=v
                n0+=grid*nw*OPW
    err=max(abs(y[r][n]-Y[r][n]) for r in range(rows) for n in range(N))/max(abs(v) for row in Y for v in row)
    print(rows,K,N,mode,f"{err:.2e}")
    return err
e=max(run(1,64,70,0,1), run(1,64,45,1,2), run(3,32,100,2,3), run(2,16,40000,1,4), run(1,8,140003,0,5), run(1,64,33,3,6))
import sys
if e >= 1e-12:
    sys.exit(f"FAIL: worst relative error {e:.2e}")
print("PASS")
