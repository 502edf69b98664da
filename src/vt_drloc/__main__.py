from vt_drloc.train import main

main()
