# from results/
cd /work/main/results
export PATH=/work/main/.venv/bin:$PATH
R=/work/runs; E=robustness-mnist-equal-budget/full10k; P=$E/p4-anchored.json
W=$E/raw-trained.json; S=$E/cnn-raw-trained-s1.json; S2=$E/raw-trained-s2.json; REST=$E/raw-trained-rest.json
P4="p4-ft-blank0.3-3seeds=$P:$R/p4a-ft3-blank0.3,$P:$R/p4a-ft3-blank0.3-s1,$P:$R/p4a-ft3-blank0.3-s2"
CNN="cnn-ft-blank0.3-3seeds=$W:$R/cnn-ft3-blank0.3,$S:$R/cnn-ft3-blank0.3-s1,$S2:$R/cnn-ft3-blank0.3-s2"
CNNREST="cnn-ft-blank0.3-3seeds=$REST:$R/cnn-ft3-blank0.3,$REST:$R/cnn-ft3-blank0.3-s1,$REST:$R/cnn-ft3-blank0.3-s2"
CAPS="caps-ft-blank0.3-3seeds=$W:$R/ft3-blank0.3,$W:$R/ft3-blank0.3-s1,$S2:$R/ft3-blank0.3-s2"
CAPSREST="caps-ft-blank0.3-3seeds=$REST:$R/ft3-blank0.3,$REST:$R/ft3-blank0.3-s1,$REST:$R/ft3-blank0.3-s2"
{
python $E/../compare.py "$P4" "$CNN"
echo
python $E/../compare.py "$P4" "$CNNREST"
echo
echo "# against the capsules' own raw fine-tunes (efficient-capsnet), read as 'CNN' below"
python $E/../compare.py "$P4" "$CAPS"
echo
python $E/../compare.py "$P4" "$CAPSREST"
} > $E/p4-anchored.txt
# the 40-epoch starts on the usual 2,000 images: p4 against the CNN's two 40-epoch seeds, read raw and with autolevels
P4S=mnist-efficient-capsnet-p4-40ep
C0=mnist-baseline-cnn-small-40ep-aug; C1=mnist-baseline-cnn-small-40ep-aug-s1
CRAW="cnn40-raw-2seeds=$C0/robustness.json:$R/$C0,$C1/robustness.json:$R/$C1"
CAL="cnn40-autolevels-2seeds=$C0/robustness-autolevels.json:$R/$C0,$C1/robustness-autolevels.json:$R/$C1"
{
python $E/../compare.py "p4-40ep-raw=$P4S/robustness.json:$R/mnist-efficient-capsnet-p4a-40ep" "$CRAW" "$CAL"
echo
python $E/../compare.py "p4-40ep-autolevels=$P4S/robustness-autolevels.json:$R/mnist-efficient-capsnet-p4a-40ep" "$CRAW" "$CAL"
} > $P4S/against-cnn40.txt
