"""The LightningModules: ranking evaluation (:mod:`.ranking`), manual Θ optimization
(:mod:`.manual`), MF-BPR and MF-λFix (:mod:`.fix`), MF-λOpt and SGDA (:mod:`.lambda_opt`), and the
baselines AMF (:mod:`.amf`) and NeuMF (:mod:`.neumf`)."""
