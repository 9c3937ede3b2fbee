# Throughput vs connections for bench/run.sh: /proxy GET (left) and POST 1 KiB (right).
#   gnuplot -e "datafile='throughput.dat'; outfile='throughput.png'; subtitle='...'" bench/plot.gp
# datafile: two blocks (GET, then POST 1 KiB) separated by two blank lines; columns:
# connections, provider, Rust provider (path mode), Rust provider (address mode), Go gateway (req/s).
if (!exists("datafile") || !exists("outfile")) {
  print "plot.gp: set datafile and outfile with -e"
  exit status 2
}
if (!exists("subtitle")) subtitle = ""

set terminal pngcairo size 1280,560 enhanced font "sans,11"
set output outfile
set multiplot layout 1,2 title "wrpc-http-provider against its anchors: /proxy throughput vs connections\n{/*0.8 ".subtitle."}"
set xlabel "connections (wrk)"
set ylabel "requests/s"
set logscale x 2
set xtics (1, 8, 32, 128)
set xrange [0.8:160]
set yrange [0:*]
set format y "%.0f"
set grid
set key inside left top box opaque
set datafile missing "-"

do for [block = 0:1] {
  set title (block == 0 ? "GET /proxy" : "POST 1 KiB /proxy")
  plot datafile index block using 1:2 with linespoints lw 2 pt 7 title "provider (C++)", \
       datafile index block using 1:3 with linespoints lw 2 pt 5 title "Rust provider, path mode", \
       datafile index block using 1:4 with linespoints lw 2 pt 13 dt 3 title "Rust provider, address mode", \
       datafile index block using 1:5 with linespoints lw 2 pt 9 dt 2 title "Go gateway (nats.go)"
}
unset multiplot
