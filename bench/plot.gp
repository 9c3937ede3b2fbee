# Throughput vs connections for bench/run.sh.
#   gnuplot -e "datafile='throughput.dat'; outfile='throughput.png'; subtitle='...'" bench/plot.gp
# datafile columns: connections, / GET, /proxy GET, Go /proxy GET, /proxy POST 1 KiB (req/s).
if (!exists("datafile") || !exists("outfile")) {
  print "plot.gp: set datafile and outfile with -e"
  exit status 2
}
if (!exists("subtitle")) subtitle = ""

set terminal pngcairo size 960,600 enhanced font "sans,11"
set output outfile
set title "wrpc-http-provider: throughput vs connections\n{/*0.8 ".subtitle."}"
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

plot datafile using 1:2 with linespoints lw 2 pt 7 title "/ GET (provider)", \
     datafile using 1:3 with linespoints lw 2 pt 5 title "/proxy GET", \
     datafile using 1:4 with linespoints lw 2 pt 9 dt 2 title "Go gateway /proxy GET", \
     datafile using 1:5 with linespoints lw 2 pt 11 title "/proxy POST 1 KiB"
