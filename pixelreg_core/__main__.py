from pixelreg_core.cli import main

raise SystemExit(main())
