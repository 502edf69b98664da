from vt_drloc.app.train import main

main()
