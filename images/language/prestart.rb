# Ruby's half of a pre-started run (see executor/runner.py, "_Prestarted"): Ruby has opened
# the program's file (a FIFO the runner fills at the go), loaded RubyGems and read the first
# line when `-r` loads this. It reads the run's arguments from the control pipe, the process's
# highest descriptor (each ended by a NUL byte; then end of file), puts them in ARGV, closes
# the pipe and returns: Ruby then reads and runs the program as `ruby main.rb ARGS` would.
# It leaves nothing the program could see: its locals are its own file's, and its entry in
# $LOADED_FEATURES (made once it returns) goes at the program's first line.
control = IO.for_fd(Dir.children('/proc/self/fd').map(&:to_i).max, autoclose: true)
args = control.read.split("\0", -1)
control.close
args.pop
locale = Encoding.find('locale')
ARGV.replace(args.map { |arg| arg.force_encoding(locale).freeze })
feature = __FILE__
TracePoint.new(:line) do |tp|
  tp.disable
  $LOADED_FEATURES.delete(feature)
end.enable
