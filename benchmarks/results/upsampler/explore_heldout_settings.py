import sys, json, time, numpy as np, torch
from pathlib import Path
sys.path.insert(0,'benchmarks')
from upsampler import _held_out,_to_tensor,_to_uint8,_psnr_ssim,_stage_images
from medsynth.upsampler import load_upsampler, shrink, enlarge
from medsynth.data import load_resized
from medsynth.features import Lite0Features, ClassifierFeatures
from medsynth.fidelity import frechet_distance
d=sys.argv[1]; ch=3 if d=='all_blood' else 1
st=load_upsampler(f'runs/ups_{d}')
s,_=_held_out(d,Path('../shared/data/'+d))
s=s[:: max(1,len(s)//100)][:100]
hi=load_resized(s,ch,128,False); lo_t=shrink(_to_tensor(hi),2); lo=_to_uint8(lo_t); bic=_to_uint8(enlarge(lo_t,2))
L=Lite0Features(); C=ClassifierFeatures(f'checkpoints/{d}/classifier')
fo=L(list(hi)); co=C(list(hi))
def rep(name, imgs):
    p,ss=_psnr_ssim(imgs,hi)
    print(name, 'psnr %.2f ssim %.3f fdL %.1f fdC %.1f'%(np.mean(p),np.mean(ss),frechet_distance(L(list(imgs)),fo),frechet_distance(C(list(imgs)),co)), flush=True)
rep('bicubic',bic)
for cfg in [dict(num_inference_steps=4), dict(num_inference_steps=12), dict(num_inference_steps=4, sampler="dpmpp_sde")]:
    t=time.time(); out=_stage_images(st,lo,0,**cfg); rep(str(cfg)+' %.2fs/img'%((time.time()-t)/len(lo)), out)
