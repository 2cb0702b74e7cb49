set terminal pngcairo size 1000,600
set output '/work/main/agent/../docs/bench-cr.png'
set title 'ferry checkpoint/restore of the test-app by memory ballast (runc + CRIU, two network-namespace nodes)'
set xlabel 'ballast (MiB)'
 set ylabel 'milliseconds'
set logscale x 2
 set logscale y 10
 set key left top
 set grid
plot '/work/main/agent/../docs/bench-cr.dat' using 1:2 with linespoints title 'CRIU frozen (app paused)', '' using 1:3 with linespoints title 'checkpoint', '' using 1:4 with linespoints title 'replication A->B', '' using 1:5 with linespoints title 'restore on B', '' using 1:6 with linespoints title 'failure -> serving on B (state kept)', '' using 1:7 with linespoints title 'cold restart (state lost)', '' using 1:8 with linespoints title 'pull-state GET+start+PUT (counter only)', '' using 1:9 with linespoints title 'raw runc checkpoint (CRIU dump, baseline)', '' using 1:10 with linespoints title 'checkpoint requested -> verified on B'
