from mmcurate.cli import main

raise SystemExit(main())
