set terminal pngcairo size 1100,650 font 'Sans,9'
set output '/work/main/bench/results/vm-20261201-0553/core_spawn_join.png'
set title 'tendril vs pthreads: spawn+join (ns, log scale; lower is better)'
set logscale y
set grid ytics
set style fill solid 0.8
set boxwidth 0.7
set xtics rotate by 30 right
set bmargin 12
set lmargin 16
set key top left
set yrange [1:*]
set arrow from graph 0, first 100 to graph 1, first 100 nohead lw 2 dt 2 lc rgb 'red'
set label 'issue target 100 ns' at graph 0.75, first 100 offset 0,0.7 tc rgb 'red'
plot '/work/main/bench/results/vm-20261201-0553/core_spawn_join.dat' using 1:($4==1?$3:1/0):xtic(2) with boxes lc rgb '#2a7ab0' title 'tendril (this run)', \
     '' using 1:($4==2?$3:1/0):xtic(2) with boxes lc rgb '#d9822b' title 'pthreads (this run)', \
     '' using 1:($4==3?$3:1/0):xtic(2) with boxes lc rgb '#aaaaaa' title 'peers (earlier, not this run)', \
     '' using 1:3:(sprintf('%.0f',$3)) with labels offset 0,0.8 notitle
